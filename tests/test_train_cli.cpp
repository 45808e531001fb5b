// bd3 train and bd3 eval from the command line: exit codes of bad flags and bad data, a
// small run with metrics and a checkpoint, --resume, and eval's JSON line.
#include <bd3/bd3.hpp>
#include <bd3/train/trainer_state.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

struct Run {
  int code = -1;
  std::string out, err;
};

Run run(const std::string& args) {
  const auto tmp = fs::temp_directory_path() / ("bd3_cli_err_" + std::to_string(::getpid()));
  const std::string cmd = std::string(BD3_CLI_PATH) + " " + args + " 2>" + tmp.string();
  Run r;
  std::FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(tmp);
  r.err.assign(std::istreambuf_iterator<char>(in), {});
  fs::remove(tmp);
  return r;
}

fs::path temp_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / ("bd3_test_cli_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::vector<nlohmann::json> read_jsonl(const fs::path& p) {
  std::ifstream in(p);
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

int count_lines(const std::string& s) {
  return int(std::count(s.begin(), s.end(), '\n'));
}

// dir/data.txt: 400 numbered lines, a few hundred byte-level sequences of 32.
fs::path numbered_text(const fs::path& dir) {
  const auto path = dir / "data.txt";
  std::ofstream f(path);
  for (int i = 0; i < 400; ++i)
    f << "And the evening and the morning were day " << i << " of the " << i % 7 << "th week.\n";
  return path;
}

}  // namespace

TEST_CASE("bd3 train: bad flags and bad data", "[cli][train]") {
  const auto dir = temp_dir("bad");
  const auto data = dir / "data.txt";
  {
    std::ofstream f(data);
    for (int i = 0; i < 200; ++i) f << "some text to train on, line " << i << "\n";
  }
  const auto empty = dir / "empty.txt";
  std::ofstream(empty).close();
  const std::string base =
      " --tokenizer bytes --layers 1 --hidden 16 --heads 2 --batch 2 --steps 2 --quiet";
  auto r = run("train --data " + data.string() + " --out " + (dir / "o1").string() +
               " --block-size 3 --length 32" + base);
  CHECK(r.code == 2);
  CHECK(count_lines(r.err) == 1);
  CHECK(r.err.find("does not divide") != std::string::npos);
  r = run("train --data " + data.string() + " --out " + (dir / "o2").string() + " --no-such-flag" +
          base);
  CHECK(r.code == 2);
  r = run("train --data " + empty.string() + " --out " + (dir / "o3").string() +
          " --block-size 4 --length 32" + base);
  CHECK(r.code == 1);
  CHECK(count_lines(r.err) == 1);
  r = run("train --data " + (dir / "missing.txt").string() + " --out " + (dir / "o4").string() +
          base);
  CHECK(r.code == 1);
  r = run("train --data " + data.string() + " --out " + (dir / "o5").string() + " --noise nope" +
          base);
  CHECK(r.code == 2);
  r = run("train --data " + data.string() + " --out " + (dir / "o6").string() + " --hidden 15" +
          base);
  CHECK(r.code == 2);
  r = run("train --data " + data.string() + " --out " + (dir / "o7").string() + " --tokenizer bpe" +
          " --layers 1 --hidden 16 --heads 2 --batch 2 --steps 2 --quiet");
  CHECK(r.code == 2);
  r = run("train --data " + data.string() + " --out " + (dir / "o8").string() + " --resume" + base);
  CHECK(r.code == 2);
  r = run("eval --model " + (dir / "nothing").string() + " --data " + data.string());
  CHECK(r.code == 1);
  fs::remove_all(dir);
}

TEST_CASE("bd3 train, --resume, bd3 eval", "[cli][train]") {
  const auto dir = temp_dir("run");
  const auto data = dir / "data.txt";
  {
    std::ofstream f(data);
    for (int i = 0; i < 40; ++i)
      f << "in the beginning was the word, and the word was with the text.\n";
  }
  const auto out = dir / "out";
  const std::string common =
      " --data " + data.string() + " --out " + out.string() +
      " --tokenizer bytes --block-size 4 --length 32 --layers 1 --hidden 32 --heads 2"
      " --batch 4 --lr 3e-3 --seed 3 --threads 1 --checkpoint-every 2";
  auto r = run("train" + common + " --steps 4");
  REQUIRE(r.code == 0);
  auto summary = nlohmann::json::parse(r.out);
  CHECK(summary["step"] == 4);
  CHECK(r.err.find("bd3 train") != std::string::npos);  // progress on stderr
  auto metrics = read_jsonl(out / "metrics.jsonl");
  REQUIRE(metrics.size() == 4);
  for (const char* k : {"step", "loss", "lr", "grad_norm", "tokens_per_s", "seconds"})
    CHECK(metrics.back().contains(k));
  CHECK(metrics.back()["step"] == 4);
  auto ck = bd3::train::load_training_checkpoint(out);
  CHECK(ck.state.step == 4);
  // A second run into the same directory without --resume is refused.
  r = run("train" + common + " --steps 4");
  CHECK(r.code == 2);
  // A conflicting flag on --resume is refused.
  r = run("train" + common + " --steps 6 --resume --lr 1e-3");
  CHECK(r.code == 2);
  r = run("train" + common + " --steps 6 --resume");
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out)["step"] == 6);
  metrics = read_jsonl(out / "metrics.jsonl");
  REQUIRE(metrics.size() == 6);
  CHECK(metrics.back()["step"] == 6);

  // The same 6 steps in one go give the same weights.
  const auto out2 = dir / "out2";
  const std::string common2 =
      " --data " + data.string() + " --out " + out2.string() +
      " --tokenizer bytes --block-size 4 --length 32 --layers 1 --hidden 32 --heads 2"
      " --batch 4 --lr 3e-3 --seed 3 --threads 1 --checkpoint-every 2";
  r = run("train" + common2 + " --steps 6 --quiet");
  REQUIRE(r.code == 0);
  auto a = bd3::train::load_training_checkpoint(out),
       b = bd3::train::load_training_checkpoint(out2);
  CHECK(a.weights == b.weights);
  CHECK(a.model == b.model);

  r = run("eval --model " + out.string() + " --data " + data.string() +
          " --samples 2 --batch 4 --split all --threads 1");
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["nelbo"].get<double>() > 0);
  CHECK(j["ppl"].get<double>() == Approx(std::exp(j["nelbo"].get<double>())));
  CHECK(j["bits_per_token"].get<double>() == Approx(j["nelbo"].get<double>() / std::log(2.0)));
  CHECK(j["tokens"].get<int64_t>() > 0);
  // Same seed, same answer; the latest symlink is a model directory too.
  auto r2 = run("eval --model " + (out / "latest").string() + " --data " + data.string() +
                " --samples 2 --batch 4 --split all --threads 1");
  REQUIRE(r2.code == 0);
  CHECK(nlohmann::json::parse(r2.out)["nelbo"] == j["nelbo"]);
  r = run("eval --model " + out.string() + " --data " + data.string() + " --split nope");
  CHECK(r.code == 2);
  fs::remove_all(dir);
}

TEST_CASE("bd3 sample's DDPM uses the noise schedule the model was trained with", "[cli][train]") {
  const auto dir = temp_dir("noise");
  const auto data = dir / "data.txt";
  {
    std::ofstream f(data);
    for (int i = 0; i < 40; ++i)
      f << "in the beginning was the word, and the word was with the text.\n";
  }
  const auto out = dir / "out";
  auto r = run("train --data " + data.string() + " --out " + out.string() +
               " --tokenizer bytes --block-size 8 --length 32 --layers 1 --hidden 32 --heads 2"
               " --batch 4 --steps 3 --seed 3 --threads 1 --noise square --quiet");
  REQUIRE(r.code == 0);
  CHECK(bd3::train::load_training_checkpoint(out).state.options.noise == "square");
  const std::string sample =
      "sample --model " + out.string() + " --steps 8 --length 64 --seed 5 --threads 1 --json";
  const auto recorded = run(sample), square = run(sample + " --noise square"),
             loglinear = run(sample + " --noise loglinear");
  REQUIRE(recorded.code == 0);
  REQUIRE(square.code == 0);
  REQUIRE(loglinear.code == 0);
  auto ids = [](const Run& r) { return nlohmann::json::parse(r.out)["ids"]; };
  CHECK(ids(recorded) == ids(square));
  CHECK(ids(recorded) != ids(loglinear));
  // A name the program does not know is a usage error, before anything is loaded.
  r = run(sample + " --noise cubic");
  CHECK(r.code == 2);
  CHECK(r.err.find("unknown noise schedule 'cubic'") != std::string::npos);
}

TEST_CASE("bd3 train --init-from: the parent's weights, a new block size and length, provenance",
          "[cli][train]") {
  const auto dir = temp_dir("init_from");
  const auto data = numbered_text(dir);
  const std::string shape =
      " --layers 2 --hidden 32 --heads 2 --cond 16 --batch 4 --threads 1"
      " --quiet --checkpoint-every 0 --data " +
      data.string();
  const auto parent = dir / "parent";
  REQUIRE(run("train --block-size 32 --length 32 --steps 40 --lr 3e-3 --warmup 0 --out " +
              parent.string() + shape)
              .code == 0);
  const auto parent_metrics = read_jsonl(parent / "metrics.jsonl");
  const double parent_loss = parent_metrics.back()["loss_avg"].get<double>();

  // --steps 0: the child's weights are the parent's published ones, bit for bit, and the
  // child records where they came from; block size and length are the child's.
  const auto zero = dir / "zero";
  auto r =
      run("train --init-from " + parent.string() + " --block-size 4 --length 64 --steps 0 --out " +
          zero.string() + " --quiet --threads 1 --data " + data.string());
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto p = bd3::load_checkpoint(bd3::train::resolve_checkpoint_dir(parent));
  const auto c = bd3::train::load_training_checkpoint(zero);
  CHECK(c.weights == p.parameters);
  CHECK(c.config.block_size == 4);
  CHECK(c.config.model_length == 64);
  CHECK(c.state.adam_step == 0);
  const auto provenance = c.state.extra.at("init_from");
  CHECK(provenance.at("step") == 40);
  CHECK(provenance.at("block_size") == 32);
  CHECK(fs::equivalent(provenance.at("dir").get<std::string>(),
                       bd3::train::resolve_checkpoint_dir(parent)));

  // One step: the child's first loss is near the parent's, far below a fresh model's.
  auto first_loss = [&](const std::string& init, const fs::path& out) {
    const auto rr = run("train --block-size 32 --length 32 --steps 1 --lr 3e-3 --warmup 0 --out " +
                        out.string() + init + shape);
    REQUIRE(rr.code == 0);
    return read_jsonl(out / "metrics.jsonl").front()["loss"].get<double>();
  };
  const double child = first_loss(" --init-from " + parent.string(), dir / "child");
  const double fresh = first_loss("", dir / "fresh");
  INFO("parent " << parent_loss << ", child " << child << ", fresh " << fresh);
  CHECK(std::abs(child - parent_loss) < 0.25 * std::abs(fresh - parent_loss));

  // A shape that differs from the parent's is one line; so is --init-from with --resume.
  r = run("train --init-from " + parent.string() + " --hidden 64 --steps 1 --out " +
          (dir / "bad").string() + " --quiet --data " + data.string());
  CHECK(r.code == 2);
  CHECK(count_lines(r.err) == 1);
  CHECK(r.err.find("the parent's hidden is 32 and this model's 64") != std::string::npos);
  r = run("train --init-from " + parent.string() + " --resume --out " + zero.string() + " --quiet");
  CHECK(r.code == 2);
  CHECK(count_lines(r.err) == 1);
  fs::remove_all(dir);
}

TEST_CASE("bd3 train --eval-every: validation NELBOs in metrics.jsonl, equal to bd3 eval's",
          "[cli][train]") {
  const auto dir = temp_dir("eval_every");
  const auto data = numbered_text(dir);
  const auto out = dir / "out";
  const auto r = run("train --data " + data.string() + " --out " + out.string() +
                     " --block-size 4 --length 32 --layers 1 --hidden 16 --heads 2 --cond 8"
                     " --batch 8 --steps 4 --eval-every 2 --eval-sequences 12 --threads 1 --quiet");
  INFO(r.err);
  REQUIRE(r.code == 0);
  std::vector<nlohmann::json> evals;
  for (const auto& j : read_jsonl(out / "metrics.jsonl"))
    if (j.value("event", "") == "eval") evals.push_back(j);
  REQUIRE(evals.size() == 2);
  CHECK(evals[0]["step"] == 2);
  CHECK(evals[1]["step"] == 4);
  CHECK(evals[1]["val_sequences"] == 12);
  CHECK(evals[0]["val_nelbo"] != evals[1]["val_nelbo"]);
  // The same split, weights (the published EMA), masks and batches as bd3 eval.
  const auto e = run("eval -m " + out.string() + " --data " + data.string() +
                     " --max-sequences 12 --batch 8 --threads 1 --quiet");
  REQUIRE(e.code == 0);
  CHECK(nlohmann::json::parse(e.out)["nelbo"].dump() == evals[1]["val_nelbo"].dump());
  fs::remove_all(dir);
}

TEST_CASE("bd3 train --recipe official: the official scripts' settings, each flag overriding",
          "[cli][train]") {
  const auto dir = temp_dir("recipe");
  const auto data = numbered_text(dir);
  const std::string common =
      " --block-size 4 --length 32 --layers 1 --hidden 16 --heads 2"
      " --cond 8 --batch 4 --steps 2 --threads 1 --quiet --data " +
      data.string();
  auto options_of = [](const fs::path& out) {
    std::ifstream in(out / "latest" / "trainer_state.json");
    REQUIRE(in);
    return nlohmann::json::parse(in)["options"];
  };
  const auto out = dir / "official";
  const auto r =
      run("train --recipe official --clip-every 1 --clip-batches 1 --out " + out.string() + common);
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto o = options_of(out);
  CHECK(o["dropout"] == 0.1);
  CHECK(o["resample"] == true);
  CHECK(o["resample_count_bos"] == true);
  CHECK(o["clip_search"] == true);
  CHECK(o["clip_widths"] == nlohmann::json({0.5, 0.6, 0.7, 0.8, 0.9}));
  CHECK(o["warmup"] == 2500);
  CHECK(o["warmup_from_zero"] == true);
  CHECK(o["lr"] == 3e-4);
  CHECK(o["ema"] == 0.9999);
  CHECK(o["grad_clip"] == 1.0);
  CHECK(o["weight_decay"] == 0.0);
  const auto lines = read_jsonl(out / "metrics.jsonl");
  std::vector<double> lrs;
  for (const auto& j : lines)
    if (j.contains("lr")) lrs.push_back(j["lr"].get<double>());
  REQUIRE(lrs.size() == 2);
  CHECK(lrs[0] == 0.0);  // LambdaLR's step 0
  CHECK(lrs[1] == Approx(3e-4 / 2500));

  // A flag given wins over the recipe's value.
  const auto over = dir / "override";
  REQUIRE(run("train --recipe official --dropout 0 --warmup 10 --no-resample --no-clip-search"
              " --out " +
              over.string() + common)
              .code == 0);
  const auto p = options_of(over);
  CHECK(p["dropout"] == 0.0);
  CHECK(p["warmup"] == 10);
  CHECK(p["resample"] == false);
  CHECK(p["clip_search"] == false);
  CHECK(p["warmup_from_zero"] == true);
  // The default recipe keeps bd3's counts.
  const auto plain = dir / "plain";
  REQUIRE(run("train --out " + plain.string() + common).code == 0);
  CHECK(options_of(plain)["warmup_from_zero"] == false);
  CHECK(options_of(plain)["resample_count_bos"] == false);
  // A resume names the same recipe or none; an unknown recipe is a usage error.
  const auto bad = run("train --resume --recipe bd3 --out " + out.string() + common);
  CHECK(bad.code == 2);
  CHECK(bad.err.find("--recipe differs from the checkpoint's") != std::string::npos);
  const auto unknown = run("train --recipe paper --out " + (dir / "x").string() + common);
  CHECK(unknown.code == 2);
  CHECK(unknown.err.find("--recipe") != std::string::npos);
  fs::remove_all(dir);
}
