#include <bd3/bd3.hpp>

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

TEST_CASE("atomic write replaces the file whole", "[io]") {
  auto dir = std::filesystem::temp_directory_path() / "bd3_test_atomic";
  std::filesystem::create_directories(dir);
  auto path = dir / "f.txt";
  bd3::io::write_file_atomic(path, "first");
  bd3::io::write_file_atomic(path, "second");
  std::ifstream in(path);
  std::string s((std::istreambuf_iterator<char>(in)), {});
  CHECK(s == "second");
  int leftovers = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) leftovers += e.path() != path;
  CHECK(leftovers == 0);
  CHECK_THROWS_AS(bd3::io::write_file_atomic(dir / "no_such_dir" / "x", "y"), bd3::Error);
  std::filesystem::remove_all(dir);
}
