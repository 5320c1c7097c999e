//! NVTX ranges (`nvg_engine::nvtx`), in both builds: `cargo test -p nvg-engine --test nvtx` (no
//! feature: every call is a no-op that reports "no tracking") and `... --features nvtx --test nvtx` (the
//! calls go to NVTX3 through the C shim of nvg-kernels).
//!
//! Without a tool, NVTX3's `nvtxRangePushA` and `nvtxRangePop` return `NVTX_NO_PUSH_POP_TRACKING` (-2):
//! the first call finds no injection library (no `NVTX_INJECTION64_PATH`, no static injection) and
//! turns every entry point into that constant (`nvtxDetail/nvtxImplCore.h`). To check what a profiler
//! would see, `a_tool_sees_named_nested_ranges` re-runs itself in a child process that installs a
//! minimal tool through NVTX3's static-injection hook (the `InitializeInjectionNvtx2_fnptr` symbol,
//! weak in NVTX, defined here; it stays null in the parent, so the parent sees no tool): the tool
//! records every push and pop and returns nesting levels as Nsight Systems does.

use nvg_engine::nvtx::{self, NO_PUSH_POP_TRACKING, Range};
use nvg_engine::{Device, Tensor};
use std::cell::Cell;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Set in the child process that runs with the test tool attached.
const TOOL_ENV: &str = "NVG_NVTX_TEST_TOOL";

/// NVTX3's static injection point (`nvtxDetail/nvtxInit.h`, load sequence version 2): a non-null
/// `NvtxInitializeInjectionNvtxFunc_t` here, when NVTX initialises (at its first call), makes it call
/// that function as a tool's entry point. An atomic has the layout of the pointer NVTX reads.
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
static InitializeInjectionNvtx2_fnptr: AtomicUsize = AtomicUsize::new(0);

type FnPtr = Option<unsafe extern "C" fn()>;
type GetExportTable = unsafe extern "C" fn(id: u32) -> *const c_void;

/// `NvtxExportTableCallbacks` (`nvtxDetail/nvtxTypes.h`).
#[repr(C)]
struct ExportTableCallbacks {
    struct_size: usize,
    get_module_function_table:
        unsafe extern "C" fn(module: c_int, out_table: *mut *mut *mut FnPtr, out_size: *mut c_uint) -> c_int,
}

const NVTX_ETID_CALLBACKS: u32 = 1;
const NVTX_CB_MODULE_CORE: c_int = 1;
const NVTX_CBID_CORE_RANGE_PUSH_A: usize = 9;
const NVTX_CBID_CORE_RANGE_POP: usize = 11;

static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());
thread_local! {
    static DEPTH: Cell<c_int> = const { Cell::new(0) };
}

unsafe extern "C" fn tool_push(message: *const c_char) -> c_int {
    // SAFETY: NVTX passes the caller's NUL-terminated message.
    let name = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
    let level = DEPTH.get();
    DEPTH.set(level + 1);
    EVENTS.lock().unwrap().push(format!("push {name} @{level}"));
    level
}

unsafe extern "C" fn tool_pop() -> c_int {
    let level = DEPTH.get() - 1;
    if level < 0 {
        EVENTS.lock().unwrap().push("pop without push".to_string());
        return -1;
    }
    DEPTH.set(level);
    EVENTS.lock().unwrap().push(format!("pop @{level}"));
    level
}

/// The tool's entry point: hooks `nvtxRangePushA` and `nvtxRangePop` through NVTX's callback table.
unsafe extern "C" fn tool_init(get_export_table: GetExportTable) -> c_int {
    // SAFETY: NVTX hands us its export-table getter; the callbacks table has the layout above, and
    // the CORE module's table holds one pointer per callback id, each to a writable function slot.
    unsafe {
        let etbl = get_export_table(NVTX_ETID_CALLBACKS) as *const ExportTableCallbacks;
        if etbl.is_null() {
            return 0;
        }
        let mut table: *mut *mut FnPtr = std::ptr::null_mut();
        let mut size: c_uint = 0;
        if ((*etbl).get_module_function_table)(NVTX_CB_MODULE_CORE, &mut table, &mut size) == 0
            || table.is_null()
            || (size as usize) <= NVTX_CBID_CORE_RANGE_POP
        {
            return 0;
        }
        let push: unsafe extern "C" fn(*const c_char) -> c_int = tool_push;
        let pop: unsafe extern "C" fn() -> c_int = tool_pop;
        **table.add(NVTX_CBID_CORE_RANGE_PUSH_A) = Some(std::mem::transmute::<
            unsafe extern "C" fn(*const c_char) -> c_int,
            unsafe extern "C" fn(),
        >(push));
        **table.add(NVTX_CBID_CORE_RANGE_POP) = Some(std::mem::transmute::<
            unsafe extern "C" fn() -> c_int,
            unsafe extern "C" fn(),
        >(pop));
    }
    1
}

fn take_events() -> Vec<String> {
    std::mem::take(&mut *EVENTS.lock().unwrap())
}

/// Whether a real profiler is attached to this process (a run under `nsys profile -t nvtx`).
fn under_a_profiler() -> bool {
    nvtx::ENABLED && std::env::var_os("NVTX_INJECTION64_PATH").is_some()
}

#[test]
fn the_build_matches_the_feature_and_the_guard_is_free() {
    assert_eq!(nvtx::ENABLED, cfg!(feature = "nvtx"));
    assert_eq!(std::mem::size_of::<Range>(), 0);
    assert_eq!(std::mem::needs_drop::<Range>(), nvtx::ENABLED);
}

#[test]
fn without_a_tool_push_and_pop_report_no_tracking() {
    if std::env::var_os(TOOL_ENV).is_some() {
        return; // the child process of `a_tool_sees_named_nested_ranges` runs only that test
    }
    if under_a_profiler() {
        eprintln!("NVTX_INJECTION64_PATH is set (a profiler is attached): skipping the no-tool check");
        return;
    }
    // Nested, raw and guarded, borrowed, formatted and odd names: all -2, nothing panics.
    assert_eq!(nvtx::push(c"outer"), NO_PUSH_POP_TRACKING);
    assert_eq!(nvtx::push(c"inner"), NO_PUSH_POP_TRACKING);
    assert_eq!(nvtx::pop(), NO_PUSH_POP_TRACKING);
    assert_eq!(nvtx::pop(), NO_PUSH_POP_TRACKING);
    assert_eq!(nvtx::pop(), NO_PUSH_POP_TRACKING, "a pop without a push is harmless");
    {
        let _a = nvtx::range_c(c"a");
        let _b = nvtx::range("b");
        let _c = nvtx::range_fmt(format_args!("c {}", 3));
        let _d = nvtx::range(&"long".repeat(200));
        let _e = nvtx::range("with\0nul");
        let _f = nvtx::range("");
        assert_eq!(nvtx::push(c"probe"), NO_PUSH_POP_TRACKING);
        assert_eq!(nvtx::pop(), NO_PUSH_POP_TRACKING);
    }
    // A kernel launch opens and closes its range.
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap();
    let y = x.to_device(Device::CudaEmu).unwrap();
    assert_eq!(y.add(&y).unwrap().to_f32_vec().unwrap(), vec![2.0, 4.0, 6.0]);
}

#[test]
fn a_tool_sees_named_nested_ranges() {
    if std::env::var_os(TOOL_ENV).is_none() {
        // NVTX initialises once per process, so the tool runs in a child: this test binary, this test.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_tool_sees_named_nested_ranges",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(TOOL_ENV, "1")
            .env_remove("NVTX_INJECTION64_PATH")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "child failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        assert!(stdout.contains("1 passed"), "the child ran no test:\n{stdout}");
        return;
    }
    let init: unsafe extern "C" fn(GetExportTable) -> c_int = tool_init; // NvtxInitializeInjectionNvtxFunc_t
    InitializeInjectionNvtx2_fnptr.store(init as usize, Ordering::SeqCst);
    // With the feature, levels as a tool reports them; without it, no tracking and no calls.
    let level = |l: c_int| if nvtx::ENABLED { l } else { NO_PUSH_POP_TRACKING };

    assert_eq!(nvtx::push(c"raw"), level(0));
    assert_eq!(nvtx::pop(), level(0));
    {
        let _outer = nvtx::range_c(c"outer");
        {
            let _inner = nvtx::range("inner");
            let _stage = nvtx::range_fmt(format_args!("stage {}", 3));
            assert_eq!(nvtx::push(c"probe"), level(3));
            assert_eq!(nvtx::pop(), level(3));
        }
        let _long = nvtx::range(&"é".repeat(200)); // 400 bytes: cut to 127 characters (254 bytes)
        let _nul = nvtx::range("cut\0here");
    }
    let expected: Vec<String> = [
        "push raw @0",
        "pop @0",
        "push outer @0",
        "push inner @1",
        "push stage 3 @2",
        "push probe @3",
        "pop @3",
        "pop @2",
        "pop @1",
        &format!("push {} @1", "é".repeat(127)),
        "push cut @2",
        "pop @2",
        "pop @1",
        "pop @0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let events = take_events();
    if nvtx::ENABLED {
        assert_eq!(events, expected);
    } else {
        assert!(events.is_empty(), "{events:?}");
    }

    // Device ops: one range per kernel launch, named after the kernel, closed when the launch returns.
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap();
    let y = x.to_device(Device::CudaEmu).unwrap();
    let z = y.add(&y).unwrap();
    assert_eq!(z.to_f32_vec().unwrap(), vec![2.0, 4.0, 6.0]);
    let events = take_events();
    if nvtx::ENABLED {
        assert!(events.contains(&"push nvg_binary_f32 @0".to_string()), "{events:?}");
        let pushes = events.iter().filter(|e| e.starts_with("push ")).count();
        let pops = events.iter().filter(|e| e.starts_with("pop @")).count();
        assert_eq!(pushes, pops, "unbalanced: {events:?}");
    } else {
        assert!(events.is_empty(), "{events:?}");
    }
    assert_eq!(DEPTH.get(), 0);
}
