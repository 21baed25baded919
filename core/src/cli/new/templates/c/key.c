/* {{name}}: a persistence-key plugin. Clients are sticky by the value of the X-User request
 * header, lower-cased; without it, no key.
 *
 * Build: clang --target=wasm32 -nostdlib -O2 -Wl,--no-entry -Wl,--export-dynamic \
 *          -o {{name}}.wasm {{name}}.c */
#include "plugboard.h"

PLUGBOARD_PLUGIN(PLUGBOARD_HOOK_KEY, 4096)

PLUGBOARD_EXPORT(plugboard_persistence_key) int32_t plugboard_persistence_key(void) {
  static const char name[] = "X-User";
  char value[256];
  int32_t len = plugboard_request_header(name, sizeof name - 1, value, sizeof value);
  if (len <= 0) return 0;
  if (len > (int32_t)sizeof value) len = sizeof value;
  for (int32_t i = 0; i < len; i++)
    if (value[i] >= 'A' && value[i] <= 'Z') value[i] += 'a' - 'A';
  plugboard_set_key(value, len);
  return 1;
}
