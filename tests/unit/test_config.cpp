// Storage configuration: presets, the TOML profile file, the environment and their precedence.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "shelbyfs/config.h"

using namespace shelbyfs;

namespace {

/// A temp dir holding config files, and a fake environment over a map.
struct Fixture {
    std::string dir;
    std::map<std::string, std::string> env;

    Fixture() {
        char tmpl[] = "/tmp/shelbyfs-config-XXXXXX";
        const char* d = ::mkdtemp(tmpl);
        REQUIRE(d != nullptr);
        dir = d;
    }
    ~Fixture() { std::filesystem::remove_all(dir); }
    Fixture(const Fixture&) = delete;
    Fixture& operator=(const Fixture&) = delete;

    std::string write(const std::string& text, const std::string& name = "config.toml", mode_t mode = 0600) {
        std::string path = dir + "/" + name;
        std::filesystem::create_directories(std::filesystem::path(path).parent_path());
        {
            std::ofstream out(path, std::ios::binary | std::ios::trunc);
            out << text;
        }
        REQUIRE(::chmod(path.c_str(), mode) == 0);
        return path;
    }

    ConfigRequest request(const std::string& path = {}, const std::string& profile = {}) {
        ConfigRequest r;
        r.config_path = path;
        r.profile = profile;
        r.getenv = [this](const char* name) -> const char* {
            auto it = env.find(name);
            return it == env.end() ? nullptr : it->second.c_str();
        };
        return r;
    }

    Result<Profile> load(const std::string& text, const std::string& profile = {}) {
        return load_profile(request(write(text), profile));
    }
};

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

}  // namespace

TEST_SUITE("config") {
    TEST_CASE("defaults with an empty environment and no file") {
        Fixture f;
        auto p = load_profile(f.request());
        REQUIRE(p.ok());
        CHECK(p->name.empty());
        CHECK(p->origin == "environment");
        CHECK(p->s3.region == "us-east-1");
        CHECK(p->s3.endpoint == "https://s3.us-east-1.amazonaws.com");
        CHECK(p->s3.access_key_id.empty());
        CHECK(p->s3.secret_access_key.empty());
        CHECK(p->s3.part_size == 16ull << 20);
        CHECK(p->s3.multipart_threshold == 64ull << 20);
        CHECK(p->s3.parts_in_flight == 4);
        CHECK(p->shelby.rpc_url == "https://api.shelbynet.shelby.xyz/shelby");
        CHECK_FALSE(p->shelby.gateway.has_value());
        CHECK(p->shelby.expiration_seconds == 30ull * 86400);
        CHECK(p->mount_options.empty());
        CHECK(p->warnings.empty());
    }

    TEST_CASE("environment only") {
        Fixture f;
        f.env = {{"AWS_ACCESS_KEY_ID", "AKID"},
                 {"AWS_SECRET_ACCESS_KEY", "SK"},
                 {"AWS_SESSION_TOKEN", "TOK"},
                 {"AWS_DEFAULT_REGION", "eu-west-1"},
                 {"SHELBY_RPC_URL", "http://localhost:9090/"},
                 {"SHELBY_ACCOUNT", "0xabc"},
                 {"SHELBY_API_KEY", "AG-key"}};
        auto p = load_profile(f.request());
        REQUIRE(p.ok());
        CHECK(p->origin == "environment");
        CHECK(p->s3.region == "eu-west-1");
        CHECK(p->s3.endpoint == "https://s3.eu-west-1.amazonaws.com");
        CHECK(p->s3.access_key_id == "AKID");
        CHECK(p->s3.secret_access_key == "SK");
        CHECK(p->s3.session_token == "TOK");
        CHECK(p->shelby.rpc_url == "http://localhost:9090");
        CHECK(p->shelby.account == "0xabc");
        CHECK(p->shelby.api_key == "AG-key");

        SUBCASE("AWS_REGION beats AWS_DEFAULT_REGION") {
            f.env["AWS_REGION"] = "ap-south-1";
            auto q = load_profile(f.request());
            REQUIRE(q.ok());
            CHECK(q->s3.region == "ap-south-1");
        }
        SUBCASE("AWS_ENDPOINT_URL sets the endpoint, trailing slash stripped") {
            f.env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:4568/";
            auto q = load_profile(f.request());
            REQUIRE(q.ok());
            CHECK(q->s3.endpoint == "http://127.0.0.1:4568");
        }
        SUBCASE("a malformed AWS_ENDPOINT_URL is an error naming it") {
            f.env["AWS_ENDPOINT_URL"] = "ftp://x";
            auto q = load_profile(f.request());
            REQUIRE_FALSE(q.ok());
            CHECK(q.error().code == Errc::InvalidArgument);
            CHECK(contains(q.error().message, "AWS_ENDPOINT_URL"));
        }
        SUBCASE("half a key pair is ignored with a warning") {
            f.env.erase("AWS_SECRET_ACCESS_KEY");
            auto q = load_profile(f.request());
            REQUIRE(q.ok());
            CHECK(q->s3.access_key_id.empty());
            REQUIRE(q->warnings.size() == 1);
            CHECK(contains(q->warnings[0], "AWS_ACCESS_KEY_ID"));
        }
    }

    TEST_CASE("presets") {
        Fixture f;
        CHECK(preset_names() == std::vector<std::string>{"akave", "aws", "shelby-local", "shelbynet"});

        SUBCASE("aws") {
            auto p = load_profile(f.request({}, "aws"));
            REQUIRE(p.ok());
            CHECK(p->name == "aws");
            CHECK(p->origin == "preset aws");
            CHECK(p->s3.region == "us-east-1");
            CHECK(p->s3.endpoint == "https://s3.us-east-1.amazonaws.com");
        }
        SUBCASE("aws follows the environment's region") {
            f.env["AWS_REGION"] = "eu-central-1";
            auto p = load_profile(f.request({}, "aws"));
            REQUIRE(p.ok());
            CHECK(p->s3.endpoint == "https://s3.eu-central-1.amazonaws.com");
        }
        SUBCASE("akave") {
            auto p = load_profile(f.request({}, "akave"));
            REQUIRE(p.ok());
            CHECK(p->origin == "preset akave");
            CHECK(p->s3.endpoint == "https://o3-rc2.akave.xyz");
            CHECK(p->s3.region == "akave-network");
            CHECK_FALSE(p->shelby.gateway.has_value());
        }
        SUBCASE("shelbynet") {
            f.env = {{"AWS_ACCESS_KEY_ID", "AKID"}, {"AWS_SECRET_ACCESS_KEY", "SK"}};
            auto p = load_profile(f.request({}, "shelbynet"));
            REQUIRE(p.ok());
            CHECK(p->shelby.rpc_url == "https://api.shelbynet.shelby.xyz/shelby");
            REQUIRE(p->shelby.gateway.has_value());
            CHECK(p->shelby.gateway->endpoint == "http://localhost:9000");
            CHECK(p->shelby.gateway->region == "shelbyland");
            // No gateway credentials of its own: it falls back to the S3 ones.
            CHECK(p->shelby.gateway->access_key_id == "AKID");
            CHECK(p->shelby.gateway->secret_access_key == "SK");
            CHECK(p->shelby.gateway->put_headers ==
                  std::vector<std::string>{"x-amz-meta-expiration-seconds: 2592000"});
        }
        SUBCASE("shelby-local") {
            auto p = load_profile(f.request({}, "shelby-local"));
            REQUIRE(p.ok());
            CHECK(p->shelby.rpc_url == "http://localhost:9090");
            CHECK_FALSE(p->shelby.gateway.has_value());
        }
    }

    TEST_CASE("a profile starting from a preset with overrides") {
        Fixture f;
        auto p = f.load(R"(
[profiles.mine]
preset = "akave"
region = "us-south-1"
part_size = "32MiB"
multipart_threshold = 104857600
parts_in_flight = 8
shelby_expiration = "2h"
)",
                        "mine");
        REQUIRE(p.ok());
        CHECK(p->name == "mine");
        CHECK(p->origin == f.dir + "/config.toml [profiles.mine]");
        CHECK(p->s3.endpoint == "https://o3-rc2.akave.xyz");
        CHECK(p->s3.region == "us-south-1");
        CHECK(p->s3.part_size == 32ull << 20);
        CHECK(p->s3.multipart_threshold == 100ull << 20);
        CHECK(p->s3.parts_in_flight == 8);
        CHECK(p->shelby.expiration_seconds == 7200);
    }

    TEST_CASE("a file profile shadows a preset of the same name") {
        Fixture f;
        auto p = f.load("[profiles.akave]\nendpoint = \"https://other.example\"\n", "akave");
        REQUIRE(p.ok());
        CHECK(p->s3.endpoint == "https://other.example");
        CHECK(p->s3.region == "us-east-1");
    }

    TEST_CASE("precedence") {
        Fixture f;
        std::string path = f.write(R"(profile = "b"
[profiles.a]
region = "region-a"
access_key_id = "A-ID"
secret_access_key = "A-SECRET"
[profiles.b]
region = "region-b"
endpoint = "https://b.example"
)");

        SUBCASE("env region beats the profile's") {
            f.env["AWS_REGION"] = "env-region";
            auto p = load_profile(f.request(path, "a"));
            REQUIRE(p.ok());
            CHECK(p->s3.region == "env-region");
            // Derived from the winning region, since nothing sets an endpoint.
            CHECK(p->s3.endpoint == "https://s3.env-region.amazonaws.com");
        }
        SUBCASE("env endpoint beats the profile's") {
            f.env["AWS_ENDPOINT_URL"] = "https://env.example";
            auto p = load_profile(f.request(path, "b"));
            REQUIRE(p.ok());
            CHECK(p->s3.endpoint == "https://env.example");
        }
        SUBCASE("explicit profile credentials beat env credentials") {
            f.env = {{"AWS_ACCESS_KEY_ID", "ENV-ID"}, {"AWS_SECRET_ACCESS_KEY", "ENV-SECRET"}};
            auto p = load_profile(f.request(path, "a"));
            REQUIRE(p.ok());
            CHECK(p->s3.access_key_id == "A-ID");
            CHECK(p->s3.secret_access_key == "A-SECRET");
        }
        SUBCASE("env credentials beat a profile chosen by AWS_PROFILE") {
            f.env = {{"AWS_ACCESS_KEY_ID", "ENV-ID"}, {"AWS_SECRET_ACCESS_KEY", "ENV-SECRET"}, {"AWS_PROFILE", "a"}};
            auto p = load_profile(f.request(path));
            REQUIRE(p.ok());
            CHECK(p->name == "a");
            CHECK(p->s3.region == "region-a");
            CHECK(p->s3.access_key_id == "ENV-ID");
            CHECK(p->s3.secret_access_key == "ENV-SECRET");
        }
        SUBCASE("profile credentials are used when the env has none") {
            f.env = {{"AWS_PROFILE", "a"}};
            auto p = load_profile(f.request(path));
            REQUIRE(p.ok());
            CHECK(p->s3.access_key_id == "A-ID");
        }
        SUBCASE("AWS_PROFILE beats the file's profile key") {
            f.env["AWS_PROFILE"] = "a";
            auto p = load_profile(f.request(path));
            REQUIRE(p.ok());
            CHECK(p->name == "a");
        }
        SUBCASE("AWS_PROFILE may name a preset") {
            f.env["AWS_PROFILE"] = "akave";
            auto p = load_profile(f.request(path));
            REQUIRE(p.ok());
            CHECK(p->origin == "preset akave");
        }
        SUBCASE("an unknown AWS_PROFILE is ignored with a warning") {
            f.env["AWS_PROFILE"] = "work";
            auto p = load_profile(f.request(path));
            REQUIRE(p.ok());
            CHECK(p->name == "b");
            REQUIRE(p->warnings.size() == 1);
            CHECK(contains(p->warnings[0], "AWS_PROFILE=work"));
        }
        SUBCASE("--profile beats AWS_PROFILE") {
            f.env["AWS_PROFILE"] = "a";
            auto p = load_profile(f.request(path, "b"));
            REQUIRE(p.ok());
            CHECK(p->name == "b");
        }
        SUBCASE("the file's profile key selects the default") {
            auto p = load_profile(f.request(path));
            REQUIRE(p.ok());
            CHECK(p->name == "b");
            CHECK(p->s3.region == "region-b");
            CHECK(p->s3.endpoint == "https://b.example");
        }
        SUBCASE("an unknown explicit profile lists the known ones") {
            auto p = load_profile(f.request(path, "nope"));
            REQUIRE_FALSE(p.ok());
            CHECK(p.error().code == Errc::InvalidArgument);
            CHECK(contains(p.error().message, "nope"));
            CHECK(contains(p.error().message, "a, b"));
            CHECK(contains(p.error().message, "akave, aws, shelby-local, shelbynet"));
        }
    }

    TEST_CASE("the file's profile key naming nothing is an error with its line") {
        Fixture f;
        auto p = f.load("\nprofile = \"ghost\"\n");
        REQUIRE_FALSE(p.ok());
        CHECK(contains(p.error().message, "config.toml:2:"));
        CHECK(contains(p.error().message, "ghost"));
    }

    TEST_CASE("*_env indirection") {
        Fixture f;
        f.env = {{"MY_ID", "ID-FROM-VAR"}, {"MY_SECRET", "SECRET-FROM-VAR"}, {"MY_KEY", "API-FROM-VAR"}};
        std::string text = R"([profiles.x]
access_key_id_env = "MY_ID"
secret_access_key_env = "MY_SECRET"
shelby_api_key_env = "MY_KEY"
shelby_gateway = "http://gw.local:9000/"
)";
        auto p = f.load(text, "x");
        REQUIRE(p.ok());
        CHECK(p->s3.access_key_id == "ID-FROM-VAR");
        CHECK(p->s3.secret_access_key == "SECRET-FROM-VAR");
        CHECK(p->shelby.api_key == "API-FROM-VAR");
        REQUIRE(p->shelby.gateway.has_value());
        CHECK(p->shelby.gateway->endpoint == "http://gw.local:9000");
        CHECK(p->shelby.gateway->region == "shelbyland");
        CHECK(p->shelby.gateway->access_key_id == "ID-FROM-VAR");
        CHECK(p->warnings.empty());  // no literal secrets in the file

        SUBCASE("an unset variable names the key and the variable") {
            f.env.erase("MY_SECRET");
            auto q = f.load(text, "x");
            REQUIRE_FALSE(q.ok());
            CHECK(q.error().code == Errc::InvalidArgument);
            CHECK(contains(q.error().message, "secret_access_key_env"));
            CHECK(contains(q.error().message, "MY_SECRET"));
            CHECK(contains(q.error().message, ":3:"));
        }
        SUBCASE("unset variables in other profiles do not matter") {
            auto q = f.load(text + "[profiles.y]\nshelby_api_key_env = \"UNSET_VAR\"\n", "x");
            CHECK(q.ok());
        }
        SUBCASE("a key and its _env twin together are an error") {
            auto q = f.load("[profiles.x]\nshelby_api_key = \"TOPSECRET1\"\nshelby_api_key_env = \"MY_KEY\"\n", "x");
            REQUIRE_FALSE(q.ok());
            CHECK(contains(q.error().message, "only one of shelby_api_key and shelby_api_key_env"));
            CHECK_FALSE(contains(q.error().message, "TOPSECRET1"));
        }
        SUBCASE("gateway credentials of its own") {
            auto q = f.load(text + "shelby_gateway_access_key_id = \"GW-ID\"\nshelby_gateway_secret_access_key_env = "
                                   "\"MY_KEY\"\n",
                            "x");
            REQUIRE(q.ok());
            CHECK(q->shelby.gateway->access_key_id == "GW-ID");
            CHECK(q->shelby.gateway->secret_access_key == "API-FROM-VAR");
        }
    }

    TEST_CASE("validation errors name file, line and key") {
        Fixture f;
        SUBCASE("unknown key in a profile") {
            auto p = f.load("[profiles.x]\nregion = \"r\"\nregoin = \"r\"\n", "x");
            REQUIRE_FALSE(p.ok());
            CHECK(p.error().code == Errc::InvalidArgument);
            CHECK(contains(p.error().message, f.dir + "/config.toml:3:"));
            CHECK(contains(p.error().message, "regoin"));
            CHECK(contains(p.error().message, "[profiles.x]"));
        }
        SUBCASE("unknown key at top level") {
            auto p = f.load("profile = \"x\"\nendpoint = \"https://e\"\n[profiles.x]\n");
            REQUIRE_FALSE(p.ok());
            CHECK(contains(p.error().message, "config.toml:2:"));
            CHECK(contains(p.error().message, "endpoint"));
        }
        SUBCASE("errors in unselected profiles still fail") {
            auto p = f.load("[profiles.x]\n[profiles.y]\nbogus = 1\n", "x");
            REQUIRE_FALSE(p.ok());
            CHECK(contains(p.error().message, "bogus"));
        }
        SUBCASE("part_size too small") {
            auto p = f.load("[profiles.x]\npart_size = \"1MiB\"\n", "x");
            REQUIRE_FALSE(p.ok());
            CHECK(contains(p.error().message, "config.toml:2:"));
            CHECK(contains(p.error().message, "part_size"));
        }
        SUBCASE("part_size too large") {
            auto p = f.load("[profiles.x]\npart_size = \"6GiB\"\n", "x");
            REQUIRE_FALSE(p.ok());
            CHECK(contains(p.error().message, "part_size"));
        }
        SUBCASE("part_size at the limits is fine") {
            CHECK(f.load("[profiles.x]\npart_size = \"5MiB\"\n", "x").ok());
            CHECK(f.load("[profiles.x]\npart_size = 5368709120\n", "x").ok());
        }
        SUBCASE("malformed size") {
            auto p = f.load("[profiles.x]\nmultipart_threshold = \"lots\"\n", "x");
            REQUIRE_FALSE(p.ok());
            CHECK(contains(p.error().message, "multipart_threshold"));
        }
        SUBCASE("parts_in_flight out of range") {
            auto p = f.load("[profiles.x]\nparts_in_flight = 65\n", "x");
            REQUIRE_FALSE(p.ok());
            CHECK(contains(p.error().message, "parts_in_flight"));
            CHECK_FALSE(f.load("[profiles.x]\nparts_in_flight = 0\n", "x").ok());
        }
        SUBCASE("wrong type") {
            auto p = f.load("[profiles.x]\nregion = 5\n", "x");
            REQUIRE_FALSE(p.ok());
            CHECK(contains(p.error().message, "region"));
            CHECK(contains(p.error().message, "expected a string"));
        }
        SUBCASE("unknown preset") {
            auto p = f.load("[profiles.x]\npreset = \"azure\"\n", "x");
            REQUIRE_FALSE(p.ok());
            CHECK(contains(p.error().message, "azure"));
            CHECK(contains(p.error().message, "preset"));
        }
        SUBCASE("bad endpoint") {
            auto p = f.load("[profiles.x]\nendpoint = \"s3.example.com\"\n", "x");
            REQUIRE_FALSE(p.ok());
            CHECK(contains(p.error().message, "endpoint"));
            CHECK_FALSE(f.load("[profiles.x]\nendpoint = \"https://\"\n", "x").ok());
            CHECK_FALSE(f.load("[profiles.x]\nendpoint = \"https://h//\"\n", "x").ok());
        }
        SUBCASE("a mount option that is not a scalar") {
            auto p = f.load("[profiles.x]\nthreads = [1, 2]\n", "x");
            REQUIRE_FALSE(p.ok());
            CHECK(contains(p.error().message, "threads"));
        }
        SUBCASE("access_key_id without a secret") {
            auto p = f.load("[profiles.x]\naccess_key_id = \"ID\"\n", "x");
            REQUIRE_FALSE(p.ok());
            CHECK(contains(p.error().message, "secret_access_key"));
        }
        SUBCASE("gateway settings without a gateway") {
            auto p = f.load("[profiles.x]\nshelby_gateway_region = \"r\"\n", "x");
            REQUIRE_FALSE(p.ok());
            CHECK(contains(p.error().message, "shelby_gateway_region"));
        }
        SUBCASE("bad account") {
            auto p = f.load("[profiles.x]\nshelby_account = \"alice\"\n", "x");
            REQUIRE_FALSE(p.ok());
            CHECK(contains(p.error().message, "shelby_account"));
        }
    }

    TEST_CASE("malformed TOML names the line") {
        Fixture f;
        auto p = f.load("[profiles.x]\nregion = \"r\"\nendpoint = \n");
        REQUIRE_FALSE(p.ok());
        CHECK(p.error().code == Errc::InvalidArgument);
        CHECK(contains(p.error().message, f.dir + "/config.toml:3:"));
    }

    TEST_CASE("config file presence") {
        Fixture f;
        SUBCASE("a missing explicit file is an error naming it") {
            auto p = load_profile(f.request(f.dir + "/nope.toml"));
            REQUIRE_FALSE(p.ok());
            CHECK(p.error().code == Errc::InvalidArgument);
            CHECK(contains(p.error().message, f.dir + "/nope.toml"));
        }
        SUBCASE("a missing default file is fine") {
            f.env["XDG_CONFIG_HOME"] = f.dir + "/xdg";
            auto p = load_profile(f.request());
            REQUIRE(p.ok());
            CHECK(p->origin == "environment");
        }
        SUBCASE("the default file under XDG_CONFIG_HOME is read") {
            f.write("profile = \"x\"\n[profiles.x]\nregion = \"xdg\"\n", "xdg/shelbyfs/config.toml");
            f.env["XDG_CONFIG_HOME"] = f.dir + "/xdg";
            f.env["HOME"] = f.dir + "/home";
            auto p = load_profile(f.request());
            REQUIRE(p.ok());
            CHECK(p->s3.region == "xdg");
            CHECK(p->origin == f.dir + "/xdg/shelbyfs/config.toml [profiles.x]");
        }
        SUBCASE("the default file under HOME is read") {
            f.write("profile = \"x\"\n[profiles.x]\nregion = \"home\"\n", "home/.config/shelbyfs/config.toml");
            f.env["HOME"] = f.dir + "/home";
            auto p = load_profile(f.request());
            REQUIRE(p.ok());
            CHECK(p->s3.region == "home");
        }
        SUBCASE("a malformed default file is still an error") {
            f.write("profile = \n", "home/.config/shelbyfs/config.toml");
            f.env["HOME"] = f.dir + "/home";
            CHECK_FALSE(load_profile(f.request()).ok());
        }
    }

    TEST_CASE("secrets in a readable file are warned about") {
        Fixture f;
        std::string text = "[profiles.x]\naccess_key_id = \"ID\"\nsecret_access_key = \"S3CR3T-VALUE\"\n";
        SUBCASE("mode 0644 warns") {
            std::string path = f.write(text, "config.toml", 0644);
            auto p = load_profile(f.request(path, "x"));
            REQUIRE(p.ok());
            REQUIRE(p->warnings.size() == 1);
            CHECK(p->warnings[0] == path + " holds secrets but is readable by others (mode 0644); run chmod 600 " + path);
            CHECK_FALSE(contains(p->warnings[0], "S3CR3T-VALUE"));
        }
        SUBCASE("mode 0600 does not") {
            std::string path = f.write(text, "config.toml", 0600);
            auto p = load_profile(f.request(path, "x"));
            REQUIRE(p.ok());
            CHECK(p->warnings.empty());
        }
        SUBCASE("a readable file without literal secrets does not") {
            std::string path = f.write("[profiles.x]\naccess_key_id = \"ID\"\nsecret_access_key_env = \"V\"\n",
                                       "config.toml", 0644);
            f.env["V"] = "v";
            auto p = load_profile(f.request(path, "x"));
            REQUIRE(p.ok());
            CHECK(p->warnings.empty());
        }
        SUBCASE("secrets in an unselected profile count too") {
            std::string path = f.write(text + "[profiles.y]\n", "config.toml", 0640);
            auto p = load_profile(f.request(path, "y"));
            REQUIRE(p.ok());
            REQUIRE(p->warnings.size() == 1);
            CHECK(contains(p->warnings[0], "mode 0640"));
        }
    }

    TEST_CASE("secret values never appear in messages") {
        Fixture f;
        const std::string secret = "TOPSECRET42";
        const char* bad_configs[] = {
            "[profiles.x]\nsecret_access_key = \"TOPSECRET42\nregion = \"r\"\n",  // unterminated string
            "[profiles.x]\nsecret_access_key = TOPSECRET42\n",                    // bare value
            "[profiles.x]\nsecret_access_key = 'TOPSECRET42' junk\n",
            "[profiles.x]\nsecret_access_key = \"TOP\\qSECRET42\"\n",              // bad escape
            "[profiles.x]\nshelby_api_key = 99999999999999999999999TOPSECRET42\n",
            "[profiles.x]\nsession_token = [\"TOPSECRET42\"]\n",                   // wrong type
            "[profiles.x]\nsecret_access_key = \"TOPSECRET42\"\n",                 // no access_key_id
            "[profiles.x]\naccess_key_id = \"I\"\nsecret_access_key = \"TOPSECRET42\"\nbogus = 1\n",
            "[profiles.x]\nshelby_gateway_secret_access_key = \"TOPSECRET42\"\n",
            "[profiles.x]\naccess_key_id = \"I\"\nsecret_access_key = \"TOPSECRET42\"\nsecret_access_key = \"x\"\n",
        };
        for (const char* text : bad_configs) {
            CAPTURE(text);
            auto p = f.load(text, "x");
            REQUIRE_FALSE(p.ok());
            CHECK_FALSE(contains(p.error().message, secret));
            CHECK_FALSE(contains(p.error().message, "TOPSECRET"));
        }
        SUBCASE("nor in warnings, nor in origin") {
            f.env = {{"AWS_PROFILE", "ghost"}, {"AWS_ACCESS_KEY_ID", "ID"}};
            std::string path =
                f.write("profile = \"x\"\n[profiles.x]\naccess_key_id = \"I\"\nsecret_access_key = \"TOPSECRET42\"\n"
                        "shelby_api_key = \"TOPSECRET43\"\nsession_token = \"TOPSECRET44\"\n",
                        "config.toml", 0666);
            auto p = load_profile(f.request(path));
            REQUIRE(p.ok());
            CHECK(p->warnings.size() == 3);
            for (const auto& w : p->warnings) CHECK_FALSE(contains(w, "TOPSECRET"));
            CHECK_FALSE(contains(p->origin, "TOPSECRET"));
        }
    }

    TEST_CASE("mount options pass through in file order") {
        Fixture f;
        auto p = f.load(R"([profiles.x]
threads = 8
cache_size = "4GiB"
region = "r"
prefetch = 4
cache_dir = "/var/cache/shelbyfs"
checkpoints = "s3://bucket/ck/"
log_file = "/tmp/s.log"
)",
                        "x");
        REQUIRE(p.ok());
        using Opts = std::vector<std::pair<std::string, std::string>>;
        CHECK(p->mount_options == Opts{{"threads", "8"},
                                       {"cache_size", "4GiB"},
                                       {"prefetch", "4"},
                                       {"cache_dir", "/var/cache/shelbyfs"},
                                       {"checkpoints", "s3://bucket/ck/"},
                                       {"log_file", "/tmp/s.log"}});
    }

    TEST_CASE("booleans are refused for mount options; empty credentials are refused") {
        Fixture f;
        auto b = f.load("[profiles.x]\ncheckpoints = true\n", "x");
        REQUIRE_FALSE(b.ok());
        CHECK(contains(b.error().message, ":2:"));
        CHECK(contains(b.error().message, "checkpoints"));
        auto e = f.load("[profiles.x]\naccess_key_id = \"\"\nsecret_access_key = \"s\"\n", "x");
        REQUIRE_FALSE(e.ok());
        CHECK(contains(e.error().message, "access_key_id"));
        CHECK(contains(e.error().message, "must not be empty"));
    }

    TEST_CASE("an environment region overriding a profile's region draws a warning") {
        Fixture f;
        f.env["AWS_REGION"] = "us-east-1";
        auto p = f.load("[profiles.x]\npreset = \"akave\"\n", "x");
        REQUIRE(p.ok());
        CHECK(p->s3.region == "us-east-1");
        REQUIRE(p->warnings.size() == 1);
        CHECK(contains(p->warnings[0], "overrides akave-network"));
    }

    TEST_CASE("a trailing slash on endpoints is stripped") {
        Fixture f;
        auto p = f.load("[profiles.x]\nendpoint = \"http://127.0.0.1:4568/\"\nshelby_rpc_url = "
                        "\"https://rpc.example/shelby/\"\nshelby_gateway = \"http://localhost:9000/\"\n",
                        "x");
        REQUIRE(p.ok());
        CHECK(p->s3.endpoint == "http://127.0.0.1:4568");
        CHECK(p->shelby.rpc_url == "https://rpc.example/shelby");
        CHECK(p->shelby.gateway->endpoint == "http://localhost:9000");
    }

    TEST_CASE("shelby_expiration parsing") {
        Fixture f;
        auto expiration = [&](const std::string& value) -> std::optional<std::uint64_t> {
            auto p = f.load("[profiles.x]\nshelby_expiration = " + value + "\n", "x");
            if (!p.ok()) return std::nullopt;
            return p->shelby.expiration_seconds;
        };
        CHECK(expiration("3600") == 3600u);
        CHECK(expiration("\"90\"") == 90u);
        CHECK(expiration("\"45s\"") == 45u);
        CHECK(expiration("\"10m\"") == 600u);
        CHECK(expiration("\"12h\"") == 43200u);
        CHECK(expiration("\"30d\"") == 2592000u);
        CHECK_FALSE(expiration("0"));
        CHECK_FALSE(expiration("-5"));
        CHECK_FALSE(expiration("\"0d\""));
        CHECK_FALSE(expiration("\"1w\""));
        CHECK_FALSE(expiration("\"d\""));
        CHECK_FALSE(expiration("\"1.5h\""));
        CHECK_FALSE(expiration("1.5"));

        SUBCASE("the gateway sends it as a header") {
            auto p = f.load("[profiles.x]\npreset = \"shelbynet\"\nshelby_expiration = \"1d\"\n", "x");
            REQUIRE(p.ok());
            REQUIRE(p->shelby.gateway.has_value());
            CHECK(p->shelby.gateway->put_headers ==
                  std::vector<std::string>{"x-amz-meta-expiration-seconds: 86400"});
        }
    }

    TEST_CASE("uses ::getenv when no getenv is injected") {
        ConfigRequest r;
        r.config_path = "/nonexistent/shelbyfs-test/config.toml";
        auto p = load_profile(r);
        REQUIRE_FALSE(p.ok());
        CHECK(contains(p.error().message, "/nonexistent/shelbyfs-test/config.toml"));
    }
}
