#include <catch2/catch.hpp>

#include "common/card_reader.h"
#include "../temp_dir.h"

using namespace tandem;

namespace {

InputError error_of(auto&& f) {
  try {
    f();
  } catch (const InputException& e) {
    return e.error();
  }
  FAIL("expected an InputError");
  return {};
}

}  // namespace

TEST_CASE("card reader reads typed values within ranges", "[cards]") {
  CardReader r(parse_card_text("a: 3\nb: 2.5\nc: true\nd: hello\ne: [1, 2]\nf: {g: 4}\nn: null\n", "t.yaml"),
               "t.yaml");
  CHECK(r.integer("a", 0, 10) == 3);
  CHECK(r.number("b", 0, 10) == 2.5);
  CHECK(r.boolean("c"));
  CHECK(r.choice("d", {"hello", "bye"}) == "hello");
  CHECK(r.integer_list("e", 0, 5) == std::vector<int64_t>{1, 2});
  CardReader f = r.section("f");
  CHECK(f.integer("g", 0, 5) == 4);
  f.finish();
  CHECK_FALSE(r.optional_integer("n", 0, 1).has_value());
  CHECK(r.integer_or("missing", 7, 0, 10) == 7);
  r.finish();
}

TEST_CASE("card reader errors name file, dotted key and reason", "[cards]") {
  auto node = parse_card_text("a: 3.5\nb: -1\nc: maybe\ns: {x: 1, y: [1, zz]}\nd: nan\ne: 1e400\n", "t.yaml");
  CardReader r(node, "t.yaml");
  auto e = error_of([&] { r.integer("a", 0, 10); });
  CHECK(e.file == "t.yaml");
  CHECK(e.key == "a");
  CHECK(e.reason.find("whole number") != std::string::npos);
  e = error_of([&] { r.integer("b", 0, 10); });
  CHECK(e.reason.find("must be in [0, 10]") != std::string::npos);
  e = error_of([&] { r.boolean("c"); });
  CHECK(e.reason.find("true or false") != std::string::npos);
  e = error_of([&] { r.number("d", 0, 10); });
  CHECK(e.reason.find("finite") != std::string::npos);
  e = error_of([&] { r.number("e", 0, 10); });
  CHECK(e.key == "e");
  CardReader s = r.section("s");
  e = error_of([&] { s.integer_list("y", 0, 10); });
  CHECK(e.key == "s.y[1]");
  e = error_of([&] { s.finish(); });
  CHECK(e.key == "s.x");
  CHECK(e.reason == "unknown key");
  e = error_of([&] { r.text("missing"); });
  CHECK(e.reason.find("missing") != std::string::npos);
  e = error_of([&] { r.section("a"); });
  CHECK(e.reason.find("map") != std::string::npos);
}

TEST_CASE("card reader reports overridden values where they were written", "[cards]") {
  auto origins = std::make_shared<OriginMap>();
  (*origins)["plan.pp"] = ValueOrigin{"s.yaml [--set]", "plan.pp"};
  (*origins)["gpu"] = ValueOrigin{"scenario.yaml", "cluster.gpu"};
  CardReader r(parse_card_text("plan: {pp: -3}\ngpu: {sms: x}\n", "card.yaml"), "card.yaml", "", origins);
  CardReader plan = r.section("plan");
  auto e = error_of([&] { plan.integer("pp", 1, 8); });
  CHECK(e.file == "s.yaml [--set]");
  CHECK(e.key == "plan.pp");
  CardReader gpu = r.section("gpu");
  e = error_of([&] { gpu.integer("sms", 1, 8); });
  CHECK(e.file == "scenario.yaml");
  CHECK(e.key == "cluster.gpu.sms");
}

TEST_CASE("unparseable text is an input error, not a crash", "[cards]") {
  auto e = error_of([&] { parse_card_text("a: [1, 2\n", "bad.yaml"); });
  CHECK(e.file == "bad.yaml");
  CHECK(e.reason.find("not valid YAML") != std::string::npos);
  e = error_of([&] { parse_card_file("/nonexistent/x.yaml"); });
  CHECK(e.reason.find("no such file") != std::string::npos);
}

TEST_CASE("an empty file says it is empty (the output of a command that failed)", "[cards]") {
  test::TempDir dir("card-reader");
  for (const char* text : {"", "\n  \n", "# only a comment\n"}) {
    const auto path = dir.write("bench.json", text);
    auto e = error_of([&] { parse_card_file(path); });
    CHECK(e.file == path);
    CHECK(e.reason.find("the file is empty") != std::string::npos);
  }
}

TEST_CASE("a KeyRecording lists the keys readers ask for, with type, range and default", "[cards]") {
  KeyRecording recording;
  CardReader r(parse_card_text("a: 3\nrows: [{x: 1}, {x: 2}]\nnote: hi\n", "t.yaml"), "t.yaml");
  r.integer("a", 1, 10);
  r.number_or("b", 0.5, 0, 1);
  r.choice_or("c", "one", {"one", "two"});
  r.ignore("note");
  r.text("note");  // a typed read replaces the ignore
  for (size_t i = 0; i < 2; ++i) {
    const std::string k = "rows[" + std::to_string(i) + "]";
    CardReader row(r.node()["rows"][i], "t.yaml", k + ".");
    row.integer("x", 0, int64_t{1} << 62);
  }
  r.read_whole("rows", "list of rows");
  const auto& keys = recording.keys();
  REQUIRE(keys.size() == 6);
  CHECK(keys[0].key == "a");
  CHECK(keys[0].type == "whole number");
  CHECK(keys[0].allowed == "[1, 10]");
  CHECK(keys[0].fallback == "required");
  CHECK(keys[1].fallback == "0.5");
  CHECK(keys[2].allowed == "one, two");
  CHECK(keys[3].key == "note");
  CHECK(keys[3].type == "text");
  CHECK(keys[4].key == "rows[].x");  // one entry for every row
  CHECK(keys[4].allowed == "[0, 4611686018427387904]");
  CHECK(keys[5].key == "rows");
  CHECK(keys[5].type == "list of rows");
}

TEST_CASE("a card's tree is bounded as its aliases expand it", "[cards]") {
  // An alias inside itself: an endless tree, refused by depth, with the key where it loops.
  InputError e = error_of([] { parse_card_text("a: {b: &x {c: *x}}\n", "loop.yaml"); });
  CHECK(e.file == "loop.yaml");
  CHECK(e.key.rfind("a.b.c.c.c.c", 0) == 0);
  CHECK(e.key.size() < 40);  // cut after a few levels: one line
  CHECK(e.reason.find("nested deeper than 256") != std::string::npos);
  e = error_of([] { parse_card_text("l: &x [*x, *x]\n", "loop.yaml"); });
  CHECK(e.key.rfind("l[0][0]", 0) == 0);
  // Nested aliases: 10^7 values in a few hundred bytes, refused by count.
  std::string bomb = "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i <= 7; ++i) {
    const std::string p = "*l" + std::to_string(i - 1);
    bomb += "l" + std::to_string(i) + ": &l" + std::to_string(i) + " [" + p;
    for (int j = 1; j < 10; ++j) bomb += ", " + p;
    bomb += "]\n";
  }
  e = error_of([&] { parse_card_text(bomb, "bomb.yaml"); });
  CHECK(e.key.rfind("l5[", 0) == 0);  // l5 alone expands to 1111111 values, past 2^20
  CHECK(e.reason.find("expands to more than 1048576") != std::string::npos);
  // Shared but finite: an alias used twice is fine.
  CHECK_NOTHROW(parse_card_text("a: &x {b: 1}\nc: *x\n", "ok.yaml"));
  // A --set value goes through the same check, under its key.
  YAML::Node v = YAML::Load("&x {y: *x}");
  e = error_of([&] { check_card_tree(v, "s.yaml [--set]", "model.rope_scaling"); });
  CHECK(e.file == "s.yaml [--set]");
  CHECK(e.key.rfind("model.rope_scaling.y.y", 0) == 0);
}

TEST_CASE("a key written twice in one map is an error naming it", "[cards]") {
  InputError e = error_of([] { parse_card_text("a: 1\nb: {c: 2, c: 3}\n", "dup.yaml"); });
  CHECK(e.file == "dup.yaml");
  CHECK(e.key == "b.c");
  CHECK(e.reason == "key written twice in one map");
  e = error_of([] { parse_card_text(R"({"x": [{"k": 1, "k": 1}]})", "dup.json"); });
  CHECK(e.key == "x[0].k");
}

TEST_CASE("whole numbers span int64; the range decides", "[cards]") {
  CardReader r(parse_card_text("a: 4611686018427387904\nb: 9223372036854775807\nc: 9223372036854775808\nd: +5\n", "t.yaml"),
               "t.yaml");
  CHECK(r.integer("a", 0, int64_t{1} << 62) == int64_t{1} << 62);
  CHECK(r.integer("b", 0, INT64_MAX) == INT64_MAX);
  CHECK(error_of([&] { r.integer("c", 0, INT64_MAX); }).reason.find("whole number") != std::string::npos);
  CHECK(r.integer("d", 0, 10) == 5);
}

TEST_CASE("card files: only regular files, bounded in size", "[cards]") {
  tandem::test::TempDir dir;
  CHECK(error_of([] { parse_card_file("/dev/zero"); }).reason.find("not a regular file") != std::string::npos);
  CHECK(error_of([&] { parse_card_file(dir.path.string()); }).reason.find("a directory") != std::string::npos);
  const std::string big = dir.write("big.yaml", "a: '" + std::string(kMaxCardBytes, 'x') + "'\n");
  CHECK(error_of([&] { parse_card_file(big); }).reason.find("larger than") != std::string::npos);
}
