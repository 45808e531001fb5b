#pragma once
// Reading what the user names on the command line: text files (or "-" for standard
// input), data files, and tokenizer directories (a checkpoint's, like --model's).
#include <bd3/error.hpp>
#include <bd3/text/detail/files.hpp>
#include <bd3/train/trainer_state.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace bd3::cli {

// The bytes of `path`, or of standard input when path is "-"; at most max_bytes.
inline std::string read_input(const std::string& path, uint64_t max_bytes, std::string_view what) {
  if (path == "-") {
    std::string data;
    char buffer[1 << 16];
    size_t n = 0;
    while ((n = std::fread(buffer, 1, sizeof buffer, stdin)) > 0) {
      if (data.size() + n > max_bytes)
        fail(std::string(what) + " on standard input is too large (the limit is " +
             std::to_string(max_bytes) + " bytes)");
      data.append(buffer, n);
    }
    if (std::ferror(stdin))
      fail_io("cannot read standard input: " + std::string(std::strerror(errno)));
    return data;
  }
  if (std::filesystem::is_directory(path))
    fail(std::string(what) + " " + path + " is a directory, not a file");
  return text::detail::read_file(path, max_bytes, what);
}

// Each --data path must be a readable regular file: say what it is when it is not.
inline void check_data_files(const std::vector<std::filesystem::path>& files) {
  namespace fs = std::filesystem;
  for (const auto& d : files) {
    std::error_code ec;
    const auto st = fs::status(d, ec);
    if (st.type() == fs::file_type::not_found || ec)
      fail("--data " + d.string() + ": no such file");
    if (st.type() == fs::file_type::directory)
      fail("--data " + d.string() + ": is a directory, not a text file");
    if (st.type() != fs::file_type::regular) fail("--data " + d.string() + ": not a regular file");
  }
}

// --tokenizer DIR: a tokenizer directory, or a training output directory, whose current
// checkpoint (checkpoint.json, as --model follows it) holds the tokenizer.
inline std::filesystem::path tokenizer_dir(const std::filesystem::path& dir) {
  if (std::filesystem::is_directory(dir) && std::filesystem::exists(dir / train::kPointerFile))
    return train::resolve_checkpoint_dir(dir);
  return dir;
}

}  // namespace bd3::cli
