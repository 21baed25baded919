/* {{name}}: a health-check plugin. A backend is up when GET /health on the checked address
 * answers 200 within a second.
 *
 * Build: clang --target=wasm32 -nostdlib -O2 -Wl,--no-entry -Wl,--export-dynamic \
 *          -o {{name}}.wasm {{name}}.c */
#include "plugboard.h"

PLUGBOARD_PLUGIN(PLUGBOARD_HOOK_HEALTH, 4096)

PLUGBOARD_EXPORT(plugboard_health_check) int32_t plugboard_health_check(int32_t backend) {
  (void)backend;
  static const char path[] = "/health";
  char target[64];
  int32_t len = plugboard_check_target(target, sizeof target);
  if (len <= 0 || len > (int32_t)sizeof target) return 0;
  return plugboard_http_get(target, len, path, sizeof path - 1, 1000) == 200;
}
