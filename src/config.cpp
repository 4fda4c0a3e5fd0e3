// Storage configuration: presets, the TOML profile file and the environment, merged field by field.
#include "shelbyfs/config.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string_view>
#include <toml++/toml.h>

#include "shelbyfs/units.h"

namespace shelbyfs {
namespace {

using namespace std::string_view_literals;

constexpr std::uint64_t kMinPartSize = 5ull << 20;
constexpr std::uint64_t kMaxPartSize = 5ull << 30;
constexpr int kMaxPartsInFlight = 64;
constexpr std::uint64_t kDefaultExpiration = 30ull * 24 * 3600;
constexpr const char* kDefaultGatewayRegion = "shelbyland";

/// A string-valued key: unset, a literal, or (for *_env keys) the name of a variable.
struct StrField {
    bool set = false;
    bool from_env = false;  ///< value holds a variable name
    std::string value;
    std::size_t line = 0;
    std::size_t column = 0;
};

/// One profile as written in the file (or built in as a preset), before the environment.
struct ProfileSpec {
    std::string name;
    StrField preset;
    StrField endpoint, region, access_key_id, secret_access_key, session_token;
    StrField shelby_rpc_url, shelby_account, shelby_api_key;
    StrField shelby_gateway, shelby_gateway_region, shelby_gateway_access_key_id,
        shelby_gateway_secret_access_key;
    StrField shelby_cli, shelby_context;
    std::optional<std::uint64_t> multipart_threshold, part_size, expiration;
    std::optional<int> parts_in_flight;
    std::vector<std::pair<std::string, std::string>> mount_options;  ///< in file order
    bool has_literal_secret = false;
};

enum class Kind { Preset, Url, Text, Account, Credential, Secret, Size, PartSize, Count, Duration };

struct KeyDesc {
    std::string_view name;
    Kind kind;
    StrField ProfileSpec::*field;  ///< for string kinds
};

const KeyDesc kKeys[] = {
    {"preset", Kind::Preset, &ProfileSpec::preset},
    {"endpoint", Kind::Url, &ProfileSpec::endpoint},
    {"region", Kind::Text, &ProfileSpec::region},
    {"access_key_id", Kind::Credential, &ProfileSpec::access_key_id},
    {"secret_access_key", Kind::Secret, &ProfileSpec::secret_access_key},
    {"session_token", Kind::Secret, &ProfileSpec::session_token},
    {"multipart_threshold", Kind::Size, nullptr},
    {"part_size", Kind::PartSize, nullptr},
    {"parts_in_flight", Kind::Count, nullptr},
    {"shelby_rpc_url", Kind::Url, &ProfileSpec::shelby_rpc_url},
    {"shelby_account", Kind::Account, &ProfileSpec::shelby_account},
    {"shelby_api_key", Kind::Secret, &ProfileSpec::shelby_api_key},
    {"shelby_gateway", Kind::Url, &ProfileSpec::shelby_gateway},
    {"shelby_gateway_region", Kind::Text, &ProfileSpec::shelby_gateway_region},
    {"shelby_gateway_access_key_id", Kind::Credential, &ProfileSpec::shelby_gateway_access_key_id},
    {"shelby_gateway_secret_access_key", Kind::Secret, &ProfileSpec::shelby_gateway_secret_access_key},
    {"shelby_cli", Kind::Text, &ProfileSpec::shelby_cli},
    {"shelby_context", Kind::Text, &ProfileSpec::shelby_context},
    {"shelby_expiration", Kind::Duration, nullptr},
};

const std::string_view kMountKeys[] = {
    "cache_size", "memory_limit", "prefetch",   "read_ahead", "threads",     "retries",  "timeout",
    "connect_timeout", "cache_dir", "disk_cache_size", "spool_dir", "spool_size", "checkpoints", "log_file",
};

const std::string_view kSecretKeys[] = {"secret_access_key", "session_token", "shelby_api_key",
                                        "shelby_gateway_secret_access_key"};

StrField literal(std::string value) {
    StrField f;
    f.set = true;
    f.value = std::move(value);
    return f;
}

std::map<std::string, ProfileSpec> make_presets() {
    std::map<std::string, ProfileSpec> p;
    auto& aws = p["aws"];
    aws.name = "aws";
    aws.region = literal("us-east-1");
    auto& akave = p["akave"];
    akave.name = "akave";
    akave.endpoint = literal("https://o3-rc2.akave.xyz");
    akave.region = literal("akave-network");
    auto& net = p["shelbynet"];
    net.name = "shelbynet";
    net.shelby_rpc_url = literal("https://api.shelbynet.shelby.xyz/shelby");
    net.shelby_gateway = literal("http://localhost:9000");
    net.shelby_gateway_region = literal("shelbyland");
    auto& local = p["shelby-local"];
    local.name = "shelby-local";
    local.shelby_rpc_url = literal("http://localhost:9090");
    return p;
}

const std::map<std::string, ProfileSpec>& presets() {
    static const auto kPresets = make_presets();
    return kPresets;
}

std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& s : items) {
        if (!out.empty()) out += ", ";
        out += s;
    }
    return out;
}

/// http(s)://host[...] with one trailing '/' removed; nullopt if not acceptable.
std::optional<std::string> normalize_url(std::string url) {
    std::size_t rest = 0;
    if (url.rfind("http://", 0) == 0) rest = 7;
    else if (url.rfind("https://", 0) == 0) rest = 8;
    else return std::nullopt;
    if (!url.empty() && url.back() == '/') url.pop_back();
    if (url.size() <= rest || url[rest] == '/' || url[rest] == ':') return std::nullopt;
    if (url.back() == '/') return std::nullopt;
    for (char c : url) {
        if (static_cast<unsigned char>(c) <= ' ' || c == '?' || c == '#' || c == 0x7f) return std::nullopt;
    }
    return url;
}

/// Seconds: digits with an optional s/m/h/d suffix; nullopt if malformed, zero or overflowing.
std::optional<std::uint64_t> parse_duration(std::string_view text) {
    std::uint64_t value = 0;
    std::size_t i = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
        auto digit = static_cast<std::uint64_t>(text[i] - '0');
        if (value > (UINT64_MAX - digit) / 10) return std::nullopt;
        value = value * 10 + digit;
        ++i;
    }
    if (i == 0 || value == 0) return std::nullopt;
    std::uint64_t mult = 1;
    std::string_view suffix = text.substr(i);
    if (suffix.empty() || suffix == "s") mult = 1;
    else if (suffix == "m") mult = 60;
    else if (suffix == "h") mult = 3600;
    else if (suffix == "d") mult = 86400;
    else return std::nullopt;
    if (value > UINT64_MAX / mult) return std::nullopt;
    return value * mult;
}

bool valid_account(std::string_view s) {
    if (s.size() < 3 || s.size() > 66 || s.substr(0, 2) != "0x") return false;
    return std::all_of(s.begin() + 2, s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

/// Builds "<file>:<line>:<column>: [profiles.x] key: msg" messages.
struct Where {
    std::string file;
    std::string section;  ///< "" for top level, else "[profiles.x]"

    Error at(const toml::source_region& src, std::string_view key, const std::string& msg) const {
        return at(src.begin.line, src.begin.column, key, msg);
    }
    Error at(std::size_t line, std::size_t column, std::string_view key, const std::string& msg) const {
        std::string m = file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": ";
        if (!section.empty()) m += section + " ";
        if (!key.empty()) m += "key " + std::string(key) + ": ";
        return make_error(Errc::InvalidArgument, m + msg);
    }
};

std::optional<std::string> scalar_text(const toml::node& node) {
    if (auto s = node.as_string()) return s->get();
    if (auto i = node.as_integer()) return std::to_string(i->get());
    // No booleans: "checkpoints = true" would name a directory "true".
    if (auto d = node.as_floating_point()) {
        char buf[64];
        auto r = std::to_chars(buf, buf + sizeof buf, d->get());
        return std::string(buf, r.ptr);
    }
    return std::nullopt;
}

Result<std::uint64_t> size_value(const Where& w, const toml::key& key, const toml::node& node) {
    if (auto i = node.as_integer()) {
        if (i->get() < 0) return w.at(node.source(), key.str(), "must not be negative");
        return static_cast<std::uint64_t>(i->get());
    }
    if (auto s = node.as_string()) {
        if (auto v = parse_size(s->get())) return *v;
        return w.at(node.source(), key.str(), "malformed size \"" + s->get() + "\" (e.g. \"16MiB\", \"1G\" or bytes)");
    }
    return w.at(node.source(), key.str(), "expected a size: a string like \"16MiB\" or an integer byte count");
}

/// Parse one [profiles.NAME] table into a spec; all problems are errors naming file, line and key.
Result<ProfileSpec> parse_profile(const Where& w, const std::string& name, const toml::table& table) {
    ProfileSpec spec;
    spec.name = name;
    struct MountEntry {
        std::size_t line, column;
        std::string name, value;
    };
    std::vector<MountEntry> mounts;
    for (const auto& [key, node] : table) {
        std::string_view k = key.str();
        bool is_env = false;
        const KeyDesc* desc = nullptr;
        for (const auto& d : kKeys) {
            if (d.name == k) desc = &d;
        }
        if (!desc && k.size() > 4 && k.substr(k.size() - 4) == "_env") {
            auto base = k.substr(0, k.size() - 4);
            for (const auto& d : kKeys) {
                if (d.name == base && (d.kind == Kind::Secret || d.kind == Kind::Credential)) desc = &d;
            }
            is_env = desc != nullptr;
        }
        if (!desc) {
            if (std::find(std::begin(kMountKeys), std::end(kMountKeys), k) != std::end(kMountKeys)) {
                auto text = scalar_text(node);
                if (!text) return w.at(node.source(), k, "expected a string or an integer");
                mounts.push_back({node.source().begin.line, node.source().begin.column, std::string(k), *text});
                continue;
            }
            return w.at(key.source(), k, "unknown key");
        }
        switch (desc->kind) {
        case Kind::Size:
        case Kind::PartSize: {
            auto v = size_value(w, key, node);
            if (!v) return std::move(v).error();
            if (desc->kind == Kind::PartSize) {
                if (*v < kMinPartSize || *v > kMaxPartSize)
                    return w.at(node.source(), k, "must be between 5MiB and 5GiB (got " + std::to_string(*v) + " bytes)");
                spec.part_size = *v;
            } else {
                spec.multipart_threshold = *v;
            }
            break;
        }
        case Kind::Count: {
            auto i = node.as_integer();
            if (!i) return w.at(node.source(), k, "expected an integer");
            if (i->get() < 1 || i->get() > kMaxPartsInFlight)
                return w.at(node.source(), k, "must be between 1 and 64 (got " + std::to_string(i->get()) + ")");
            spec.parts_in_flight = static_cast<int>(i->get());
            break;
        }
        case Kind::Duration: {
            std::optional<std::uint64_t> v;
            if (auto i = node.as_integer()) {
                if (i->get() > 0) v = static_cast<std::uint64_t>(i->get());
            } else if (auto s = node.as_string()) {
                v = parse_duration(s->get());
            } else {
                return w.at(node.source(), k, "expected seconds as an integer or a string like \"30d\"");
            }
            if (!v) return w.at(node.source(), k, "expected a positive duration: seconds, or digits with s, m, h or d");
            spec.expiration = *v;
            break;
        }
        case Kind::Preset:
        case Kind::Url:
        case Kind::Text:
        case Kind::Account:
        case Kind::Credential:
        case Kind::Secret: {
            bool secret = desc->kind == Kind::Secret && !is_env;
            auto s = node.as_string();
            // Never echo the value of a secret key, not even its type's rendering.
            if (!s) return w.at(node.source(), k, is_env ? "expected a variable name (string)" : "expected a string");
            std::string value = s->get();
            StrField& field = spec.*(desc->field);
            if (field.set)
                return w.at(key.source(), k,
                            "only one of " + std::string(desc->name) + " and " + std::string(desc->name) +
                                "_env may be set");
            if (is_env && value.empty()) return w.at(node.source(), k, "expected a variable name, got an empty string");
            if (!is_env && value.empty() && (desc->kind == Kind::Credential || desc->kind == Kind::Secret))
                return w.at(node.source(), k, "must not be empty (leave the key out for anonymous requests)");
            if (!is_env) {
                if (desc->kind == Kind::Url) {
                    auto url = normalize_url(value);
                    if (!url)
                        return w.at(node.source(), k,
                                    "expected http://host... or https://host... (got \"" + value + "\")");
                    value = *url;
                } else if (desc->kind == Kind::Preset) {
                    if (!presets().count(value))
                        return w.at(node.source(), k,
                                    "unknown preset \"" + value + "\" (known: " + join(preset_names()) + ")");
                } else if (desc->kind == Kind::Account) {
                    if (!valid_account(value))
                        return w.at(node.source(), k, "expected 0x followed by 1 to 64 hex digits (got \"" + value + "\")");
                } else if (desc->kind == Kind::Text && value.empty() && desc->name != "shelby_context" &&
                           desc->name != "shelby_cli") {
                    return w.at(node.source(), k, "must not be empty");
                }
            }
            if (secret) spec.has_literal_secret = true;
            field.set = true;
            field.from_env = is_env;
            field.value = std::move(value);
            field.line = key.source().begin.line;
            field.column = key.source().begin.column;
            break;
        }
        }
    }
    std::sort(mounts.begin(), mounts.end(), [](const MountEntry& a, const MountEntry& b) {
        return a.line != b.line ? a.line < b.line : a.column < b.column;
    });
    for (auto& m : mounts) spec.mount_options.emplace_back(std::move(m.name), std::move(m.value));

    auto key_name = [](std::string_view base, const StrField& f) {
        return std::string(base) + (f.from_env ? "_env" : "");
    };
    auto pair_check = [&](const StrField& id, std::string_view id_name, const StrField& secret,
                          std::string_view secret_name, const StrField& token, std::string_view token_name)
        -> std::optional<Error> {
        if (id.set && !secret.set)
            return w.at(id.line, id.column, key_name(id_name, id), "needs " + std::string(secret_name) + " as well");
        if (!id.set && secret.set)
            return w.at(secret.line, secret.column, key_name(secret_name, secret),
                        "needs " + std::string(id_name) + " as well");
        if (!id.set && token.set)
            return w.at(token.line, token.column, key_name(token_name, token),
                        "needs " + std::string(id_name) + " as well");
        return std::nullopt;
    };
    if (auto e = pair_check(spec.access_key_id, "access_key_id", spec.secret_access_key, "secret_access_key",
                            spec.session_token, "session_token"))
        return *e;
    StrField none;
    if (auto e = pair_check(spec.shelby_gateway_access_key_id, "shelby_gateway_access_key_id",
                            spec.shelby_gateway_secret_access_key, "shelby_gateway_secret_access_key", none, ""))
        return *e;
    return spec;
}

/// toml++ descriptions quote offending fragments; on a line that assigns a secret, drop them.
std::string scrub_description(std::string description, std::string_view source, std::size_t line) {
    std::size_t begin = 0;
    for (std::size_t n = 1; n < line && begin != std::string_view::npos; ++n) {
        begin = source.find('\n', begin);
        if (begin != std::string_view::npos) ++begin;
    }
    if (begin == std::string_view::npos) return description;
    std::string_view text = source.substr(begin, source.find('\n', begin) - begin);
    auto first = text.find_first_not_of(" \t\"'");
    if (first == std::string_view::npos) return description;
    text = text.substr(first);
    bool secret_line = false;
    for (auto key : kSecretKeys) {
        if (text.rfind(key, 0) == 0) secret_line = true;
    }
    if (!secret_line) return description;
    std::string out;
    bool inside = false;
    for (char c : description) {
        if (c == '\'') {
            out += inside ? "'" : "'...";
            inside = !inside;
        } else if (!inside) {
            out += c;
        }
    }
    return out;
}

struct FileData {
    std::string path;
    std::map<std::string, ProfileSpec> profiles;
    std::string default_profile;
    std::size_t default_line = 0, default_column = 0;
};

Result<std::optional<FileData>> read_file(const std::string& path, bool is_explicit,
                                          std::vector<std::string>& warnings) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        int err = errno;
        if (err == ENOENT && !is_explicit) return std::optional<FileData>{};
        return make_error(Errc::InvalidArgument, "config file " + path + ": " + std::strerror(err));
    }
    if (S_ISDIR(st.st_mode)) return make_error(Errc::InvalidArgument, "config file " + path + ": is a directory");
    std::ifstream in(path, std::ios::binary);
    if (!in) return make_error(Errc::InvalidArgument, "config file " + path + ": cannot open: " + std::strerror(errno));
    std::ostringstream buf;
    buf << in.rdbuf();
    if (in.bad()) return make_error(Errc::InvalidArgument, "config file " + path + ": read error");
    std::string content = buf.str();

    toml::table root;
    try {
        root = toml::parse(std::string_view(content), std::string_view(path));
    } catch (const toml::parse_error& e) {
        const auto& b = e.source().begin;
        std::string desc = scrub_description(std::string(e.description()), content, b.line);
        return make_error(Errc::InvalidArgument,
                          path + ":" + std::to_string(b.line) + ":" + std::to_string(b.column) + ": " + desc);
    }

    FileData file;
    file.path = path;
    Where top{path, ""};
    bool any_secret = false;
    for (const auto& [key, node] : root) {
        std::string_view k = key.str();
        if (k == "profile") {
            auto s = node.as_string();
            if (!s || s->get().empty()) return top.at(node.source(), k, "expected a profile name (string)");
            file.default_profile = s->get();
            file.default_line = node.source().begin.line;
            file.default_column = node.source().begin.column;
        } else if (k == "profiles") {
            auto tbl = node.as_table();
            if (!tbl) return top.at(node.source(), k, "expected a table of profiles ([profiles.NAME])");
            for (const auto& [pkey, pnode] : *tbl) {
                std::string name(pkey.str());
                Where w{path, "[profiles." + name + "]"};
                auto ptbl = pnode.as_table();
                if (!ptbl) return w.at(pnode.source(), "", "expected a table");
                auto spec = parse_profile(w, name, *ptbl);
                if (!spec) return std::move(spec).error();
                any_secret = any_secret || spec->has_literal_secret;
                file.profiles.emplace(name, std::move(*spec));
            }
        } else {
            return top.at(key.source(), k, "unknown key (expected profile or [profiles.NAME])");
        }
    }
    if (any_secret && (st.st_mode & 077) != 0) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
        warnings.push_back(path + " holds secrets but is readable by others (mode " + mode + "); run chmod 600 " +
                           path);
    }
    return std::optional<FileData>(std::move(file));
}

}  // namespace

std::vector<std::string> preset_names() {
    std::vector<std::string> names;
    for (const auto& [name, spec] : presets()) names.push_back(name);
    return names;  // std::map keeps them sorted
}

Result<Profile> load_profile(const ConfigRequest& request) {
    auto getenv_fn = request.getenv ? request.getenv : [](const char* n) -> const char* { return ::getenv(n); };
    auto env = [&](const char* name) -> std::string {
        const char* v = getenv_fn(name);
        return v ? std::string(v) : std::string();
    };

    Profile out;
    std::string path = request.config_path;
    bool is_explicit = !path.empty();
    if (!is_explicit) {
        if (auto xdg = env("XDG_CONFIG_HOME"); !xdg.empty()) path = xdg + "/shelbyfs/config.toml";
        else if (auto home = env("HOME"); !home.empty()) path = home + "/.config/shelbyfs/config.toml";
    }
    std::optional<FileData> file;
    if (!path.empty()) {
        auto r = read_file(path, is_explicit, out.warnings);
        if (!r) return std::move(r).error();
        file = std::move(*r);
    }

    auto known = [&](const std::string& name) {
        return (file && file->profiles.count(name)) || presets().count(name);
    };
    auto known_list = [&]() {
        std::vector<std::string> names;
        if (file)
            for (const auto& [n, s] : file->profiles) names.push_back(n);
        std::string msg = names.empty() ? std::string("no profiles in ") + (file ? file->path : "a config file")
                                        : "profiles in " + file->path + ": " + join(names);
        return msg + "; presets: " + join(preset_names());
    };

    std::string name;
    if (!request.profile.empty()) {
        if (!known(request.profile))
            return make_error(Errc::InvalidArgument,
                              "unknown profile \"" + request.profile + "\" (" + known_list() + ")");
        name = request.profile;
    } else if (auto aws_profile = env("AWS_PROFILE"); !aws_profile.empty()) {
        if (known(aws_profile)) name = aws_profile;
        else
            out.warnings.push_back("ignoring AWS_PROFILE=" + aws_profile +
                                   ": not a shelbyfs profile or preset (" + known_list() + ")");
    }
    if (name.empty() && file && !file->default_profile.empty()) {
        if (!known(file->default_profile))
            return Where{file->path, ""}.at(file->default_line, file->default_column, "profile",
                                            "unknown profile \"" + file->default_profile + "\" (" + known_list() + ")");
        name = file->default_profile;
    }

    // The layers, highest first: the file's profile, then its preset (or the preset named directly).
    const ProfileSpec* spec = nullptr;
    const ProfileSpec* base = nullptr;
    Where where{file ? file->path : std::string(), ""};
    if (!name.empty()) {
        if (file && file->profiles.count(name)) {
            spec = &file->profiles.at(name);
            if (spec->preset.set) base = &presets().at(spec->preset.value);
            out.origin = file->path + " [profiles." + name + "]";
            where.section = "[profiles." + name + "]";
        } else {
            base = &presets().at(name);
            out.origin = "preset " + name;
        }
    } else {
        out.origin = "environment";
    }
    out.name = name;

    // Resolves one string key through both layers; *_env keys read the named variable.
    auto resolve = [&](StrField ProfileSpec::*field, std::string_view key) -> Result<std::optional<std::string>> {
        for (const ProfileSpec* layer : {spec, base}) {
            if (!layer) continue;
            const StrField& f = layer->*field;
            if (!f.set) continue;
            if (!f.from_env) return std::optional<std::string>(f.value);
            const char* v = getenv_fn(f.value.c_str());
            if (!v)
                return where.at(f.line, f.column, std::string(key) + "_env",
                                "environment variable " + f.value + " is not set");
            return std::optional<std::string>(std::string(v));
        }
        return std::optional<std::string>{};
    };
#define SHELBYFS_RESOLVE(var, member)                                  \
    auto var##_r = resolve(&ProfileSpec::member, #member);             \
    if (!var##_r) return std::move(var##_r).error();                   \
    std::optional<std::string> var = std::move(*var##_r)
    SHELBYFS_RESOLVE(p_endpoint, endpoint);
    SHELBYFS_RESOLVE(p_region, region);
    SHELBYFS_RESOLVE(p_access, access_key_id);
    SHELBYFS_RESOLVE(p_secret, secret_access_key);
    SHELBYFS_RESOLVE(p_token, session_token);
    SHELBYFS_RESOLVE(p_rpc, shelby_rpc_url);
    SHELBYFS_RESOLVE(p_account, shelby_account);
    SHELBYFS_RESOLVE(p_api_key, shelby_api_key);
    SHELBYFS_RESOLVE(p_gateway, shelby_gateway);
    SHELBYFS_RESOLVE(p_gateway_region, shelby_gateway_region);
    SHELBYFS_RESOLVE(p_gateway_access, shelby_gateway_access_key_id);
    SHELBYFS_RESOLVE(p_gateway_secret, shelby_gateway_secret_access_key);
    SHELBYFS_RESOLVE(p_cli, shelby_cli);
    SHELBYFS_RESOLVE(p_context, shelby_context);
#undef SHELBYFS_RESOLVE
    auto pick_num = [&](auto ProfileSpec::*member, auto fallback) {
        for (const ProfileSpec* layer : {spec, base}) {
            if (layer && (layer->*member)) return *(layer->*member);
        }
        return fallback;
    };

    S3Settings& s3 = out.s3;
    if (auto v = env("AWS_REGION"); !v.empty()) s3.region = v;
    else if (auto d = env("AWS_DEFAULT_REGION"); !d.empty()) s3.region = d;
    else if (p_region) s3.region = *p_region;
    else s3.region = "us-east-1";
    if (p_region && *p_region != s3.region) {
        // The documented precedence, but a likely mistake: Akave signs only with its own region.
        out.warnings.push_back("the environment's region " + s3.region + " overrides " + *p_region + " of " +
                               out.origin + " (unset AWS_REGION / AWS_DEFAULT_REGION to use it)");
    }

    if (auto v = env("AWS_ENDPOINT_URL"); !v.empty()) {
        auto url = normalize_url(v);
        if (!url)
            return make_error(Errc::InvalidArgument,
                              "AWS_ENDPOINT_URL: expected http://host... or https://host... (got \"" + v + "\")");
        s3.endpoint = *url;
    } else if (p_endpoint) {
        s3.endpoint = *p_endpoint;
    } else {
        s3.endpoint = "https://s3." + s3.region + ".amazonaws.com";
    }

    std::string env_access = env("AWS_ACCESS_KEY_ID");
    std::string env_secret = env("AWS_SECRET_ACCESS_KEY");
    bool env_creds = !env_access.empty() && !env_secret.empty();
    if (env_access.empty() != env_secret.empty())
        out.warnings.push_back(std::string("ignoring ") +
                               (env_access.empty() ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID") +
                               ": the other half of the key pair is not set");
    bool explicit_profile = !request.profile.empty();
    if (p_access && (explicit_profile || !env_creds)) {
        s3.access_key_id = *p_access;
        s3.secret_access_key = p_secret.value_or("");
        s3.session_token = p_token.value_or("");
    } else if (env_creds) {
        s3.access_key_id = env_access;
        s3.secret_access_key = env_secret;
        s3.session_token = env("AWS_SESSION_TOKEN");
    }
    s3.multipart_threshold = pick_num(&ProfileSpec::multipart_threshold, s3.multipart_threshold);
    s3.part_size = pick_num(&ProfileSpec::part_size, s3.part_size);
    s3.parts_in_flight = pick_num(&ProfileSpec::parts_in_flight, s3.parts_in_flight);

    ShelbySettings& sh = out.shelby;
    if (auto v = env("SHELBY_RPC_URL"); !v.empty()) {
        auto url = normalize_url(v);
        if (!url)
            return make_error(Errc::InvalidArgument,
                              "SHELBY_RPC_URL: expected http://host... or https://host... (got \"" + v + "\")");
        sh.rpc_url = *url;
    } else if (p_rpc) {
        sh.rpc_url = *p_rpc;
    }
    if (auto v = env("SHELBY_ACCOUNT"); !v.empty()) {
        if (!valid_account(v))
            return make_error(Errc::InvalidArgument,
                              "SHELBY_ACCOUNT: expected 0x followed by 1 to 64 hex digits (got \"" + v + "\")");
        sh.account = v;
    } else if (p_account) {
        sh.account = *p_account;
    }
    if (auto v = env("SHELBY_API_KEY"); !v.empty()) sh.api_key = v;
    else if (p_api_key) sh.api_key = *p_api_key;
    sh.cli = p_cli.value_or("");
    sh.cli_context = p_context.value_or("");
    sh.expiration_seconds = pick_num(&ProfileSpec::expiration, kDefaultExpiration);

    if (p_gateway) {
        S3Settings g;
        g.endpoint = *p_gateway;
        g.region = p_gateway_region.value_or(kDefaultGatewayRegion);
        if (p_gateway_access) {
            g.access_key_id = *p_gateway_access;
            g.secret_access_key = p_gateway_secret.value_or("");
        } else {
            g.access_key_id = s3.access_key_id;
            g.secret_access_key = s3.secret_access_key;
            g.session_token = s3.session_token;
        }
        g.multipart_threshold = s3.multipart_threshold;
        g.part_size = s3.part_size;
        g.parts_in_flight = s3.parts_in_flight;
        g.put_headers.push_back("x-amz-meta-expiration-seconds: " + std::to_string(sh.expiration_seconds));
        sh.gateway = std::move(g);
    } else if (spec) {
        for (auto [member, key] : {std::pair{&ProfileSpec::shelby_gateway_region, "shelby_gateway_region"},
                                   std::pair{&ProfileSpec::shelby_gateway_access_key_id, "shelby_gateway_access_key_id"},
                                   std::pair{&ProfileSpec::shelby_gateway_secret_access_key,
                                             "shelby_gateway_secret_access_key"}}) {
            const StrField& f = spec->*member;
            if (f.set)
                return where.at(f.line, f.column, std::string(key) + (f.from_env ? "_env" : ""),
                                "set but no shelby_gateway is configured");
        }
    }

    if (spec) out.mount_options = spec->mount_options;
    return out;
}

}  // namespace shelbyfs
