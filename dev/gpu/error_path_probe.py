"""Which C++ error paths crash on this machine's torch and compiler.

On the GPU image (torch 2.11, extensions built by gcc 13.3, the process running the system
libstdc++.so.6.0.33) inserting an integer into a std::ostream from extension code segfaults
in the extension's own instance of std::ostream::_M_insert<long>, at -O3 and at -O0 alike
(NVIDIA H100 run): so TORCH_CHECK, whose c10::str formats each part through an ostream,
turned a bad input into a crash whenever its message held a number. Strings alone and
std::to_string work. fastconv's checks go through FASTCONV_CHECK (csrc/check.h), which builds
the message without an ostream; on that image it raises RuntimeError. This builds a tiny
extension with torch.utils.cpp_extension.load_inline, with fastconv's flags (-O3 -fopenmp)
and at -O0, calls each error path in a fresh process, and on SIGSEGV prints the mapped C++
runtimes and the top native frames.

    python dev/gpu/error_path_probe.py            # every build x function, one process each
"""
import pathlib
import subprocess
import sys

SOURCE = r'''
#include <torch/extension.h>
#include <execinfo.h>
#include <signal.h>
#include <unistd.h>
#include <sstream>
#include "check.h"
static void on_segv(int) { void* f[64]; int n = backtrace(f, 64); backtrace_symbols_fd(f, n, 2); _exit(139); }
void install() { signal(SIGSEGV, on_segv); }
std::string stream_int(int64_t v) { std::ostringstream s; s << "x " << v; return s.str(); }
std::string c10_str_int(int64_t v) { return c10::str("x ", v); }
void check_int(int64_t v) { TORCH_CHECK(v < 0, "bad ", v); }
void check_str(std::string v) { TORCH_CHECK(false, "bad ", v); }
void throw_std(int64_t v) { throw std::runtime_error(std::to_string(v)); }
void fastconv_check_int(int64_t v) { FASTCONV_CHECK(v < 0, "bad ", v, " in ", std::vector<int64_t>{v, 2}); }
'''
FUNCTIONS = ["install", "stream_int", "c10_str_int", "check_int", "check_str", "throw_std",
             "fastconv_check_int"]
CSRC = str(pathlib.Path(__file__).resolve().parents[2] / "csrc")
BUILDS = {"fastconv_flags": ["-O3", "-fno-math-errno", "-fopenmp"], "O0": ["-O0"]}


def call(build: str, fn: str) -> None:
    from torch.utils.cpp_extension import load_inline

    mod = load_inline(name=f"error_path_probe_{build}", cpp_sources=SOURCE, functions=FUNCTIONS,
                      extra_cflags=BUILDS[build], extra_include_paths=[CSRC],
                      extra_ldflags=["-fopenmp"] if "-fopenmp" in BUILDS[build] else [])
    mod.install()
    # Which C++ runtimes the process has mapped: two libstdc++ copies would explain a
    # crash in number formatting (locale facets from one, stream code from the other).
    with open("/proc/self/maps") as f:
        libs = sorted({line.split()[-1] for line in f if "libstdc++" in line or "libc++" in line})
    print("libstdc++ mapped:", " ".join(libs), file=sys.stderr)
    try:
        print("returned", getattr(mod, fn)("s" if fn == "check_str" else 3))
    except Exception as e:  # what a correct build does for the check_* and throw_* paths
        print("raised", type(e).__name__, str(e).splitlines()[0][:60])


def main() -> None:
    if len(sys.argv) == 3:
        return call(*sys.argv[1:])
    for build in BUILDS:
        for fn in FUNCTIONS[1:]:
            r = subprocess.run([sys.executable, __file__, build, fn], capture_output=True,
                               text=True, timeout=300)
            print(f"{build:15s} {fn:12s} rc {r.returncode:4d} {r.stdout.strip()[-70:]}")
            if r.returncode:
                # The top frames (the crash site) and the runtimes the process mapped.
                lines = r.stderr.splitlines()
                keep = [l for l in lines if "libstdc++ mapped" in l] + lines[-18:-10]
                print("   " + "\n   ".join(keep))


if __name__ == "__main__":
    main()
