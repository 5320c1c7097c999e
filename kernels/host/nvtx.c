/* NVTX ranges for nvg-rs (cargo feature `nvtx`): the two NVTX3 calls the engine needs, behind plain C
 * symbols that Rust can link against. NVTX3 is header-only: the first call looks for a tool (the library
 * named by NVTX_INJECTION64_PATH, which `nsys profile -t nvtx` sets, loaded with dlopen; or a statically
 * linked injection through the weak symbol InitializeInjectionNvtx2_fnptr) and, when there is none,
 * turns every call into a no-op that returns NVTX_NO_PUSH_POP_TRACKING (-2). */
#include <nvtx3/nvToolsExt.h>

/* Starts a nested range on the calling thread: the 0-based nesting level under a tool, else negative. */
int nvg_nvtx_push(const char* name) { return nvtxRangePushA(name); }

/* Ends the calling thread's innermost range: the level ended under a tool, else negative. */
int nvg_nvtx_pop(void) { return nvtxRangePop(); }
