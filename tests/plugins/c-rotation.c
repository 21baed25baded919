/* Test plugin (tests/plugins_abi.rs): one round robin over every available backend on shared
 * counter 0, and a log line the first time an instance serves, numbered from shared counter
 * 1, so the test sees how many instances (one per worker thread) took part. */
#include "plugboard.h"

PLUGBOARD_PLUGIN(PLUGBOARD_HOOK_SELECT, 4096)

static int64_t me = -1;

PLUGBOARD_EXPORT(plugboard_select_server) int32_t plugboard_select_server(int32_t n) {
  if (me < 0) {
    me = plugboard_shared_counter_add(1, 1);
    char line[] = "rotation instance 0 serving";
    line[18] = (char)('0' + me % 10);
    plugboard_log(PLUGBOARD_INFO, line, sizeof line - 1);
  }
  int32_t up = 0;
  for (int32_t i = 0; i < n; i++) up += plugboard_backend_get(i, PLUGBOARD_AVAILABLE) == 1;
  if (up == 0) return -1;
  uint64_t turn = (uint64_t)plugboard_shared_counter_add(0, 1) % (uint64_t)up;
  for (int32_t i = 0; i < n; i++)
    if (plugboard_backend_get(i, PLUGBOARD_AVAILABLE) == 1 && turn-- == 0) return i;
  return -1;
}
