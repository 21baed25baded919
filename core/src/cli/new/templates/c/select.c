/* {{name}}: a select-server plugin. Requests for /admin go to the first backend; the rest go
 * round robin over the other available backends, one rotation for all worker threads (shared
 * counter 0). Backends are numbered from 0.
 *
 * Build: clang --target=wasm32 -nostdlib -O2 -Wl,--no-entry -Wl,--export-dynamic \
 *          -o {{name}}.wasm {{name}}.c */
#include "plugboard.h"

PLUGBOARD_PLUGIN(PLUGBOARD_HOOK_SELECT, 4096)

static int available(int32_t i) { return plugboard_backend_get(i, PLUGBOARD_AVAILABLE) == 1; }

/* Whether the request's path starts with "/admin" (no C library: compared by hand). */
static int admin(void) {
  static const char prefix[] = "/admin";
  char path[sizeof prefix - 1];
  if (plugboard_request_get(PLUGBOARD_PATH, path, sizeof path) < (int32_t)sizeof path) return 0;
  for (uint32_t i = 0; i < sizeof path; i++)
    if (path[i] != prefix[i]) return 0;
  return 1;
}

PLUGBOARD_EXPORT(plugboard_select_server) int32_t plugboard_select_server(int32_t n) {
  if (admin()) return n > 0 && available(0) ? 0 : -1;
  int32_t rest = 0;
  for (int32_t i = 1; i < n; i++) rest += available(i);
  if (rest == 0) return -1;
  uint64_t turn = (uint64_t)plugboard_shared_counter_add(0, 1) % (uint64_t)rest;
  for (int32_t i = 1; i < n; i++)
    if (available(i) && turn-- == 0) return i;
  return -1;
}
