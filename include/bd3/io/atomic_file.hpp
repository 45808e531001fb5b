#pragma once
// Crash-safe file writes: write a temporary file next to the target, fsync it, rename
// it over the target, fsync the directory. A SIGKILL at any moment leaves either the
// old file or the new one, never a half-written file.
#include <bd3/error.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

namespace bd3::io {

namespace detail {
inline std::string errno_text() {
  return std::strerror(errno);
}

inline void write_all(int fd, const char* data, size_t size, const std::string& what) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_io("cannot write " + what + ": " + errno_text());
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
}

inline void fsync_directory(const std::filesystem::path& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // best effort: some filesystems do not allow it
  ::fsync(fd);
  ::close(fd);
}
}  // namespace detail

// True for the name of a temporary file write_file_atomic* makes ("<target>.tmp.<pid>.<n>"):
// one that a SIGKILL between its creation and its rename leaves behind.
inline bool is_atomic_temporary_name(std::string_view name) {
  const size_t at = name.rfind(".tmp.");
  if (at == std::string_view::npos || at == 0) return false;
  const std::string_view rest = name.substr(at + 5);  // "<pid>.<n>"
  const size_t dot = rest.find('.');
  if (dot == 0 || dot == std::string_view::npos || dot + 1 == rest.size()) return false;
  for (size_t i = 0; i < rest.size(); ++i)
    if (i != dot && (rest[i] < '0' || rest[i] > '9')) return false;
  return true;
}

// Writes `chunks` (concatenated) to `path` atomically. Throws bd3::Error (io) on failure,
// after removing the temporary file.
template <class Chunks>
void write_file_atomic_chunks(const std::filesystem::path& path, const Chunks& chunks) {
  static std::atomic<unsigned> counter{0};
  auto tmp = path;
  tmp += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail_io("cannot create " + tmp.string() + ": " + detail::errno_text());
  try {
    for (std::string_view chunk : chunks)
      detail::write_all(fd, chunk.data(), chunk.size(), path.string());
    if (::fsync(fd) != 0) fail_io("cannot fsync " + path.string() + ": " + detail::errno_text());
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail_io("cannot close " + path.string() + ": " + detail::errno_text());
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string why = detail::errno_text();
    ::unlink(tmp.c_str());
    fail_io("cannot rename into " + path.string() + ": " + why);
  }
  detail::fsync_directory(path.parent_path());
}

inline void write_file_atomic(const std::filesystem::path& path, std::string_view bytes) {
  std::string_view chunks[1] = {bytes};
  write_file_atomic_chunks(path, chunks);
}

}  // namespace bd3::io
