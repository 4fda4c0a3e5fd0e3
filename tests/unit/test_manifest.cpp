// Manifest parsing, validation, serialization and location resolution.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "fake_reader.h"
#include "shelbyfs/manifest.h"

using namespace shelbyfs;
using Json = nlohmann::json;

namespace {

Manifest sample_manifest() {
    test::FakeReader r;
    r.objects["s0.tar"] = test::pattern(3000, 1);
    r.objects["s1.tar"] = test::pattern(100, 2);
    Manifest m;
    m.block_size = 1024;
    m.shards = {ShardInfo{"s0.tar", "s0.tar", 0, {}, {}}, ShardInfo{"s1.tar", "s1.tar", 0, {}, {}}};
    m.samples = {SampleInfo{"cat/1.png", 0, 512, 1000, {}}, SampleInfo{"cat/2.png", 0, 2000, 1000, {}},
                 SampleInfo{"dog/ü.png", 1, 0, 100, {}}, SampleInfo{".hidden", 1, 100, 0, {}}};
    test::seal(m, r);
    return m;
}

std::string message_of(const Json& doc) {
    auto r = Manifest::parse(doc.dump(), "m.json");
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::InvalidArgument);
    return r.error().message;
}

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

}  // namespace

TEST_SUITE("manifest") {
    TEST_CASE("round-trips through to_json and parse") {
        Manifest m = sample_manifest();
        REQUIRE(m.validate("m"));
        std::string text = m.to_json();
        auto parsed = Manifest::parse(text, "m.json");
        REQUIRE(parsed);
        CHECK(parsed->to_json() == text);
        CHECK(parsed->samples.size() == 4);
        CHECK(parsed->samples[2].path == "dog/ü.png");
        CHECK(parsed->shards[0].blocks.size() == 3);
        CHECK(parsed->shards[0].blocks[2] == m.shards[0].blocks[2]);
        CHECK(parsed->samples[1].offset == 2000);
    }

    TEST_CASE("an empty manifest is valid") {
        Manifest m;
        auto parsed = Manifest::parse(m.to_json(), "m.json");
        REQUIRE(parsed);
        CHECK(parsed->samples.empty());
    }

    TEST_CASE("rejects malformed and truncated JSON with the position") {
        std::string text = sample_manifest().to_json();
        auto r = Manifest::parse(text.substr(0, text.size() / 2), "m.json");
        REQUIRE_FALSE(r);
        CHECK(contains(r.error().message, "m.json: not valid JSON"));
        CHECK(contains(r.error().message, "line"));
        CHECK_FALSE(Manifest::parse("", "m.json"));
        CHECK(contains(message_of(Json::array()), "not a JSON object"));
    }

    TEST_CASE("names the entry and the problem for bad samples") {
        Json doc = Json::parse(sample_manifest().to_json());
        SUBCASE("dot-dot") {
            doc["samples"][1]["path"] = "cat/../2.png";
            auto msg = message_of(doc);
            CHECK(contains(msg, "samples[1]"));
            CHECK(contains(msg, "'..'"));
        }
        SUBCASE("absolute") {
            doc["samples"][0]["path"] = "/etc/passwd";
            CHECK(contains(message_of(doc), "samples[0] (\"/etc/passwd\"): absolute path"));
        }
        SUBCASE("empty name") {
            doc["samples"][2]["path"] = "";
            CHECK(contains(message_of(doc), "samples[2]"));
        }
        SUBCASE("empty component") {
            doc["samples"][2]["path"] = "dog//x";
            CHECK(contains(message_of(doc), "empty component"));
        }
        SUBCASE("duplicate") {
            doc["samples"][1]["path"] = "cat/1.png";
            CHECK(contains(message_of(doc), "samples[1] (\"cat/1.png\"): duplicate path"));
        }
        SUBCASE("file and directory at once") {
            doc["samples"][3]["path"] = "cat";
            CHECK(contains(message_of(doc), "both a file and a directory"));
        }
        SUBCASE("range outside its shard") {
            doc["samples"][1]["offset"] = 2500;
            auto msg = message_of(doc);
            CHECK(contains(msg, "samples[1]"));
            CHECK(contains(msg, "outside shard \"s0.tar\" of size 3000"));
        }
        SUBCASE("overflowing range") {
            doc["samples"][1]["offset"] = 18446744073709551615ull;
            CHECK(contains(message_of(doc), "outside shard"));
        }
        SUBCASE("missing shard") {
            doc["samples"][0]["shard"] = 7;
            CHECK(contains(message_of(doc), "shard 7 does not exist"));
        }
        SUBCASE("negative size") {
            doc["samples"][0]["size"] = -5;
            CHECK(contains(message_of(doc), "samples[0]: field \"size\" is missing or not a non-negative integer"));
        }
        SUBCASE("bad hash") {
            doc["samples"][0]["xxh3_128"] = "abc";
            CHECK(contains(message_of(doc), "\"xxh3_128\" is not 32 hex digits"));
        }
    }

    TEST_CASE("names the entry and the problem for bad shards and headers") {
        Json doc = Json::parse(sample_manifest().to_json());
        SUBCASE("shard name with a slash") {
            doc["shards"][0]["name"] = "a/b.tar";
            CHECK(contains(message_of(doc), "shards[0]"));
        }
        SUBCASE("unsupported location scheme") {
            doc["shards"][1]["location"] = "ftp://host/s1.tar";
            CHECK(contains(message_of(doc), "shards[1] (\"s1.tar\"): unsupported location scheme"));
        }
        SUBCASE("duplicate shard name") {
            doc["shards"][1]["name"] = "s0.tar";
            CHECK(contains(message_of(doc), "duplicate shard name"));
        }
        SUBCASE("block count disagrees with size") {
            doc["shards"][0]["blocks"].erase(0);
            CHECK(contains(message_of(doc), "has 2 block hashes, expected 3"));
        }
        SUBCASE("wrong format") {
            doc["format"] = "webdataset";
            CHECK(contains(message_of(doc), "expected \"shelbyfs-manifest\""));
        }
        SUBCASE("future version") {
            doc["version"] = 2;
            CHECK(contains(message_of(doc), "unsupported version 2"));
        }
        SUBCASE("zero block size") {
            doc["block_size"] = 0;
            CHECK(contains(message_of(doc), "block_size"));
        }
        SUBCASE("missing samples") {
            doc.erase("samples");
            CHECK(contains(message_of(doc), "\"samples\" is missing"));
        }
    }

    TEST_CASE("reads keys in any order, the last duplicate winning, as the DOM reader did") {
        std::string h(32, 'a');
        std::string text = R"({"samples": [{"xxh3_128": ")" + h + R"(", "size": 1, "offset": 0, "shard": 0,
                                             "path": "x", "path": "d/y", "extra": {"n": [1, {}]}}],
                               "extra": [[{}]], "block_size": 1024, "version": 1,
                               "shards": [{"blocks": [")" + h + R"("], "size": 10, "xxh3_128": ")" + h + R"(",
                                           "location": "s", "name": "s"}],
                               "format": "shelbyfs-manifest"})";
        auto parsed = Manifest::parse(text, "m.json");
        REQUIRE(parsed);
        REQUIRE(parsed->samples.size() == 1);
        CHECK(parsed->samples[0].path == "d/y");
        CHECK(parsed->shards[0].blocks.size() == 1);
    }

    TEST_CASE("reports problems in document order whatever the key order") {
        Json doc = Json::parse(sample_manifest().to_json());
        SUBCASE("a syntax error anywhere beats an earlier bad entry") {
            doc["samples"][0]["size"] = -1;
            std::string text = doc.dump();
            auto r = Manifest::parse(text.substr(0, text.size() - 2), "m.json");
            REQUIRE_FALSE(r);
            CHECK(contains(r.error().message, "not valid JSON"));
        }
        SUBCASE("the first bad sample, even when a later one is worse") {
            doc["samples"][3]["path"] = 5;
            doc["samples"][1]["offset"] = "x";
            CHECK(contains(message_of(doc), "samples[1]: field \"offset\""));
        }
        SUBCASE("a bad shard before a bad sample") {
            doc["samples"][0] = 1;
            doc["shards"][1]["blocks"][0] = 7;
            CHECK(contains(message_of(doc), "shards[1]: blocks[0] is not 32 hex digits"));
        }
        SUBCASE("a field error before a path error in an earlier sample") {
            doc["samples"][0]["path"] = "../x";
            doc["samples"][3]["xxh3_128"] = 1;
            CHECK(contains(message_of(doc), "samples[3]: field \"xxh3_128\" is missing or not a string"));
        }
        SUBCASE("a path error before a later duplicate") {
            doc["samples"][1]["path"] = "cat/1.png";
            doc["samples"][0]["path"] = "cat//1.png";
            CHECK(contains(message_of(doc), "samples[0] (\"cat//1.png\"): path has an empty component"));
        }
        SUBCASE("a duplicate before a later range error") {
            doc["samples"][1]["path"] = "cat/1.png";
            doc["samples"][2]["offset"] = 99;
            CHECK(contains(message_of(doc), "samples[1] (\"cat/1.png\"): duplicate path"));
        }
    }

    TEST_CASE("resolves shard locations against the manifest location") {
        CHECK(resolve_location("/data/set/manifest.json", "shard-000000.tar") == "/data/set/shard-000000.tar");
        CHECK(resolve_location("/data/set/manifest.json", "/abs/s.tar") == "/abs/s.tar");
        CHECK(resolve_location("/data/set/manifest.json", "http://h/s.tar") == "http://h/s.tar");
        CHECK(resolve_location("http://h:8080/a/b/manifest.json", "s.tar") == "http://h:8080/a/b/s.tar");
        CHECK(resolve_location("http://h:8080/a/manifest.json?x=1", "s.tar") == "http://h:8080/a/s.tar");
        CHECK(resolve_location("http://h:8080/a/manifest.json", "/root.tar") == "http://h:8080/root.tar");
        CHECK(resolve_location("http://h:8080", "s.tar") == "http://h:8080/s.tar");
        CHECK(is_url("https://x/y"));
        CHECK_FALSE(is_url("data/set"));
        CHECK_FALSE(is_url("://x"));
    }
}
