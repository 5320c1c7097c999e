//! Builds the CUDA kernels twice from the same sources in `cuda/`:
//!
//! 1. **PTX** for sm_90 and sm_80 with nvcc, embedded as `&'static str` (`PTX_MODULES`). nvcc is looked
//!    up in `NVCC`, then `PATH`, then `CUDA_HOME`/`CUDA_PATH`, then the pinned wheels that
//!    `tools/install-nvcc.sh` installs (`NVG_NVCC_DIR`, default `<workspace>/target/nvcc`). Without nvcc
//!    the crate builds with no PTX and says so in a cargo warning (the CUDA backend then reports
//!    "kernels not built").
//! 2. **Host emulation**: the same sources compiled as C++ with `-DNVG_EMU` against `emu/cuda_emu.h`,
//!    plus the fiber scheduler `emu/runtime.cpp`, into a static library linked whole (the kernels
//!    register themselves by name from static constructors). This needs only a C++17 compiler (`CXX`,
//!    default `c++`), so CI runs every kernel on the CPU.
//! 3. **NVTX** (feature `nvtx` only): `host/nvtx.c`, a two-function shim over the header-only NVTX3 API
//!    (`nvtxRangePushA` / `nvtxRangePop`), compiled with the C compiler (`CC`, default `cc`) against
//!    `nvtx3/nvToolsExt.h` from the pinned `nvidia-nvtx` wheel (`NVG_NVCC_DIR`, default
//!    `<workspace>/target/nvcc`, as installed by `tools/install-nvcc.sh`) or a CUDA toolkit
//!    (`CUDA_HOME`/`CUDA_PATH`), and linked with `libdl` (NVTX3 dlopens the profiler's injection library).
//!    Without the header the build fails and says how to get it.

use std::path::{Path, PathBuf};
use std::process::Command;

const ARCHES: [&str; 2] = ["sm_90", "sm_80"];

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("kernels/cuda")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    v.sort();
    v
}

fn find_nvcc(workspace: &Path) -> Option<PathBuf> {
    let works = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Ok(p) = std::env::var("NVCC") {
        return Some(PathBuf::from(p));
    }
    if works(Path::new("nvcc")) {
        return Some(PathBuf::from("nvcc"));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(home) = std::env::var(var) {
            let p = Path::new(&home).join("bin/nvcc");
            if works(&p) {
                return Some(p);
            }
        }
    }
    let wheel_dir = std::env::var("NVG_NVCC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace.join("target/nvcc"));
    let p = wheel_dir.join("nvidia/cu13/bin/nvcc");
    works(&p).then_some(p)
}

/// The include directory that holds `nvtx3/nvToolsExt.h`: the pinned wheel first (the version CI
/// tests), then a CUDA toolkit.
fn find_nvtx_include(workspace: &Path) -> Result<PathBuf, Vec<PathBuf>> {
    let wheel_dir = std::env::var("NVG_NVCC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace.join("target/nvcc"));
    let mut candidates = vec![wheel_dir.join("nvidia/cu13/include")];
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(home) = std::env::var(var) {
            candidates.push(Path::new(&home).join("include"));
        }
    }
    match candidates.iter().find(|d| d.join("nvtx3/nvToolsExt.h").is_file()) {
        Some(d) => Ok(d.clone()),
        None => Err(candidates),
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest.parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let cuda_dir = manifest.join("cuda");
    let emu_dir = manifest.join("emu");
    for p in [&cuda_dir, &emu_dir] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    for v in ["NVCC", "CUDA_HOME", "CUDA_PATH", "NVG_NVCC_DIR", "CXX", "PATH"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    // 3. The NVTX shim, built first: a missing header fails the build before the long compiles.
    if std::env::var_os("CARGO_FEATURE_NVTX").is_some() {
        build_nvtx(&manifest, &workspace, &out);
    }

    let srcs = sources(&cuda_dir);

    // 1. PTX.
    let mut entries = Vec::new();
    match find_nvcc(&workspace) {
        Some(nvcc) => {
            for src in &srcs {
                let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
                for arch in ARCHES {
                    let ptx = out.join(format!("{stem}.{arch}.ptx"));
                    run(
                        Command::new(&nvcc)
                            .args(["-ptx", "-O3", "-std=c++17", &format!("-arch={arch}"), "-o"])
                            .arg(&ptx)
                            .arg(src),
                        &format!("nvcc {}", src.display()),
                    );
                    entries.push(format!(
                        "    PtxModule {{ name: {stem:?}, arch: {arch:?}, ptx: include_str!({:?}) }},",
                        ptx.display().to_string()
                    ));
                }
            }
        }
        None => println!(
            "cargo:warning=nvcc not found (NVCC, PATH, CUDA_HOME, or tools/install-nvcc.sh): building without PTX; \
             the CUDA backend will report that kernels were not built"
        ),
    }
    std::fs::write(
        out.join("ptx_modules.rs"),
        format!("pub const PTX_MODULES: &[PtxModule] = &[\n{}\n];\n", entries.join("\n")),
    )
    .unwrap();

    // 2. Host emulation library.
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let mut objects = Vec::new();
    let mut units: Vec<PathBuf> = srcs.clone();
    units.push(emu_dir.join("runtime.cpp"));
    for src in &units {
        let obj = out.join(format!("emu_{}.o", src.file_stem().unwrap().to_string_lossy()));
        run(
            Command::new(&cxx)
                .args([
                    "-std=c++17",
                    "-O2",
                    "-g",
                    "-fPIC",
                    "-DNVG_EMU",
                    "-Wall",
                    "-Wno-unused-function",
                ])
                .args(["-x", "c++", "-c"])
                .arg(src)
                .arg("-o")
                .arg(&obj),
            &format!("{cxx} (host emulation) {}", src.display()),
        );
        objects.push(obj);
    }
    let lib = out.join("libnvg_emu.a");
    let _ = std::fs::remove_file(&lib);
    run(Command::new("ar").arg("crs").arg(&lib).args(&objects), "ar");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static:+whole-archive=nvg_emu");
    println!("cargo:rustc-link-lib=dylib=stdc++");
}

fn build_nvtx(manifest: &Path, workspace: &Path, out: &Path) {
    println!("cargo:rerun-if-env-changed=CC");
    let src = manifest.join("host/nvtx.c");
    println!("cargo:rerun-if-changed={}", src.display());
    let include = find_nvtx_include(workspace).unwrap_or_else(|searched| {
        let searched: Vec<String> = searched
            .iter()
            .map(|d| d.join("nvtx3/nvToolsExt.h").display().to_string())
            .collect();
        panic!(
            "feature `nvtx`: the NVTX3 header nvtx3/nvToolsExt.h was not found (looked for {}). \
             Run tools/install-nvcc.sh (it installs the pinned nvidia-nvtx wheel into target/nvcc; \
             elsewhere set NVG_NVCC_DIR to its directory) or set CUDA_HOME to a CUDA toolkit, \
             or build without the `nvtx` feature.",
            searched.join(", ")
        )
    });
    println!("cargo:rerun-if-changed={}", include.join("nvtx3").display());
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let obj = out.join("nvtx.o");
    run(
        Command::new(&cc)
            .args(["-std=c99", "-O2", "-g", "-fPIC", "-Wall"])
            .arg("-I")
            .arg(&include)
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj),
        &format!("{cc} (NVTX shim) {}", src.display()),
    );
    let lib = out.join("libnvg_nvtx.a");
    let _ = std::fs::remove_file(&lib);
    run(Command::new("ar").arg("crs").arg(&lib).arg(&obj), "ar (NVTX shim)");
    println!("cargo:rustc-link-lib=static=nvg_nvtx");
    println!("cargo:rustc-link-lib=dylib=dl");
}
