/* /admin to the first backend; everything else round robin across the others, one
 * rotation for all worker threads (shared counter 0). */
#include "plugboard.h"

PLUGBOARD_PLUGIN(PLUGBOARD_HOOK_SELECT, 4096)

PLUGBOARD_EXPORT(plugboard_select_server) int32_t plugboard_select_server(int32_t n) {
  static const char admin[] = "/admin";
  char path[sizeof admin - 1];
  int32_t len = plugboard_request_get(PLUGBOARD_PATH, path, sizeof path), same = 0;
  while (len >= (int32_t)sizeof path && same < (int32_t)sizeof path && path[same] == admin[same]) same++;
  if (same == sizeof path) return 0;
  int32_t rest = 0;
  for (int32_t i = 1; i < n; i++) rest += plugboard_backend_get(i, PLUGBOARD_AVAILABLE) == 1;
  if (rest == 0) return -1;
  uint64_t turn = (uint64_t)plugboard_shared_counter_add(0, 1) % (uint64_t)rest;
  for (int32_t i = 1; i < n; i++)
    if (plugboard_backend_get(i, PLUGBOARD_AVAILABLE) == 1 && turn-- == 0) return i;
  return -1;
}
