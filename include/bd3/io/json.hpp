#pragma once
// Limits on untrusted JSON text, checked before it is parsed. nlohmann parses any depth
// without recursion, but copying, comparing and dumping a value recurse once per level:
// a file of a few kilobytes of '[' would overflow the stack in an error message.
#include <bd3/error.hpp>

#include <cstddef>
#include <string>
#include <string_view>

namespace bd3::io {

// Deeper than any file bd3 reads (config.json, safetensors headers and tokenizer.json
// nest a few levels); serde_json, which the reference safetensors reader uses, also
// stops at 128.
inline constexpr size_t kMaxJsonDepth = 128;

// True when arrays and objects in `text` nest deeper than `limit` (brackets inside
// strings do not count). Meant for text about to be parsed; invalid JSON fails there.
inline bool json_nests_deeper_than(std::string_view text, size_t limit) {
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;  // the escaped character cannot end the string
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return false;
}

// bd3::Error naming `source` when `text` nests deeper than kMaxJsonDepth.
inline void check_json_depth(std::string_view text, const std::string& source) {
  if (json_nests_deeper_than(text, kMaxJsonDepth))
    fail(source + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
}

}  // namespace bd3::io
