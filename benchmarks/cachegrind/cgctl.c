/* Client requests that bracket the measured conv under valgrind's callgrind
 * (--instr-atstart=no): everything before (Python, torch import) runs
 * uninstrumented, and only the conv's data accesses reach the cache simulator.
 * Built by validate.py: cc -shared -fPIC -O1 cgctl.c -o cgctl.so */
#include <valgrind/callgrind.h>

void cg_start(void) {
  CALLGRIND_ZERO_STATS;
  CALLGRIND_START_INSTRUMENTATION;
}

void cg_stop(void) {
  CALLGRIND_STOP_INSTRUMENTATION;
  CALLGRIND_DUMP_STATS_AT("conv");
}
