// Manifest parsing, validation and deterministic serialization (nlohmann/json).
#include "shelbyfs/manifest.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <limits>
#include <optional>
#include <unordered_set>

namespace shelbyfs {

namespace {

using Json = nlohmann::json;

constexpr std::uint64_t kMaxBlockSize = 256ull * 1024 * 1024;

std::string json_quote(std::string_view s) {
    // nlohmann escapes control characters and quotes, which is what a message needs.
    return Json(std::string(s)).dump(-1, ' ', false, Json::error_handler_t::replace);
}

Error invalid(std::string_view origin, const std::string& where, const std::string& what) {
    return make_error(Errc::InvalidArgument, std::string(origin) + ": " + where + ": " + what);
}

// Typed field access that reports the entry and field on failure.
class Fields {
public:
    Fields(const Json& object, std::string_view origin, std::string where)
        : object_(object), origin_(origin), where_(std::move(where)) {}

    Result<std::string> string(const char* key) const {
        auto it = object_.find(key);
        if (it == object_.end() || !it->is_string())
            return invalid(origin_, where_, std::string("field \"") + key + "\" is missing or not a string");
        return it->get<std::string>();
    }
    Result<std::uint64_t> uint(const char* key) const {
        auto it = object_.find(key);
        if (it == object_.end() || !it->is_number_unsigned())
            return invalid(origin_, where_,
                           std::string("field \"") + key + "\" is missing or not a non-negative integer");
        return it->get<std::uint64_t>();
    }
    Result<ContentHash> hash(const char* key) const {
        auto text = string(key);
        if (!text) return text.error();
        auto h = ContentHash::from_hex(*text);
        if (!h) return invalid(origin_, where_, std::string("field \"") + key + "\" is not 32 hex digits");
        return *h;
    }

    /// Store a field into `out`; on failure remember the first error and
    /// return false, so several fields read as one && chain.
    bool read(const char* key, std::string& out) { return take(string(key), out); }
    bool read(const char* key, std::uint64_t& out) { return take(uint(key), out); }
    bool read(const char* key, ContentHash& out) { return take(hash(key), out); }
    Error error() const { return error_.value_or(make_error(Errc::Internal, "manifest: no error (M01)")); }

private:
    template <typename T>
    bool take(Result<T> r, T& out) {
        if (!r) {
            if (!error_) error_ = r.error();
            return false;
        }
        out = std::move(*r);
        return true;
    }

    std::optional<Error> error_;
    const Json& object_;
    std::string_view origin_;
    std::string where_;
};

Result<void> check_path(std::string_view origin, const std::string& where, std::string_view path) {
    if (path.empty()) return invalid(origin, where, "empty path");
    if (path.front() == '/') return invalid(origin, where, "absolute path (must be relative)");
    if (path.find('\0') != std::string_view::npos) return invalid(origin, where, "path contains a NUL byte");
    std::size_t start = 0;
    while (start <= path.size()) {
        std::size_t end = path.find('/', start);
        if (end == std::string_view::npos) end = path.size();
        std::string_view part = path.substr(start, end - start);
        if (part.empty()) return invalid(origin, where, "path has an empty component");
        if (part == ".") return invalid(origin, where, "path has a '.' component");
        if (part == "..") return invalid(origin, where, "path has a '..' component");
        start = end + 1;
    }
    return {};
}

std::uint64_t block_count(std::uint64_t size, std::uint64_t block_size) {
    return size / block_size + (size % block_size != 0 ? 1 : 0);
}

}  // namespace

Result<Manifest> Manifest::parse(std::string_view text, std::string_view origin) {
    Json doc;
    try {
        doc = Json::parse(text.begin(), text.end());
    } catch (const Json::parse_error& e) {
        std::string what = e.what();
        // Drop nlohmann's "[json.exception.parse_error.101] " prefix.
        if (auto pos = what.find("] "); pos != std::string::npos) what = what.substr(pos + 2);
        return make_error(Errc::InvalidArgument, std::string(origin) + ": not valid JSON (truncated?): " + what);
    }
    if (!doc.is_object()) return invalid(origin, "top level", "not a JSON object");

    Manifest m;
    Fields top(doc, origin, "top level");
    auto format = top.string("format");
    if (!format) return format.error();
    if (*format != kManifestFormat)
        return invalid(origin, "top level", "\"format\" is " + json_quote(*format) + ", expected \"shelbyfs-manifest\"");
    auto version = top.uint("version");
    if (!version) return version.error();
    if (*version != kManifestVersion)
        return invalid(origin, "top level",
                       "unsupported version " + std::to_string(*version) + " (this shelbyfs reads version 1)");
    m.version = static_cast<std::uint32_t>(*version);
    auto block_size = top.uint("block_size");
    if (!block_size) return block_size.error();
    m.block_size = *block_size;

    auto shards = doc.find("shards");
    if (shards == doc.end() || !shards->is_array())
        return invalid(origin, "top level", "field \"shards\" is missing or not an array");
    auto samples = doc.find("samples");
    if (samples == doc.end() || !samples->is_array())
        return invalid(origin, "top level", "field \"samples\" is missing or not an array");

    m.shards.reserve(shards->size());
    for (std::size_t i = 0; i < shards->size(); ++i) {
        const Json& entry = (*shards)[i];
        std::string where = "shards[" + std::to_string(i) + "]";
        if (!entry.is_object()) return invalid(origin, where, "not a JSON object");
        Fields f(entry, origin, where);
        ShardInfo s;
        if (!(f.read("name", s.name) && f.read("location", s.location) && f.read("size", s.size) &&
              f.read("xxh3_128", s.hash)))
            return f.error();
        auto blocks = entry.find("blocks");
        if (blocks == entry.end() || !blocks->is_array())
            return invalid(origin, where, "field \"blocks\" is missing or not an array");
        s.blocks.reserve(blocks->size());
        for (std::size_t b = 0; b < blocks->size(); ++b) {
            const Json& hex = (*blocks)[b];
            auto h = hex.is_string() ? ContentHash::from_hex(hex.get_ref<const std::string&>()) : std::nullopt;
            if (!h) return invalid(origin, where, "blocks[" + std::to_string(b) + "] is not 32 hex digits");
            s.blocks.push_back(*h);
        }
        m.shards.push_back(std::move(s));
    }

    m.samples.reserve(samples->size());
    for (std::size_t i = 0; i < samples->size(); ++i) {
        const Json& entry = (*samples)[i];
        std::string where = "samples[" + std::to_string(i) + "]";
        if (!entry.is_object()) return invalid(origin, where, "not a JSON object");
        Fields f(entry, origin, where);
        SampleInfo s;
        std::uint64_t shard = 0;
        if (!(f.read("path", s.path) && f.read("shard", shard) && f.read("offset", s.offset) &&
              f.read("size", s.size) && f.read("xxh3_128", s.hash)))
            return f.error();
        if (shard > std::numeric_limits<std::uint32_t>::max())
            return invalid(origin, where + " (" + json_quote(s.path) + ")", "shard index out of range");
        s.shard = static_cast<std::uint32_t>(shard);
        m.samples.push_back(std::move(s));
    }

    if (auto ok = m.validate(origin); !ok) return std::move(ok).error();
    return m;
}

Result<void> Manifest::validate(std::string_view origin) const {
    if (block_size == 0 || block_size > kMaxBlockSize)
        return invalid(origin, "top level", "\"block_size\" must be between 1 and 268435456");

    std::unordered_set<std::string_view> shard_names;
    for (std::size_t i = 0; i < shards.size(); ++i) {
        const ShardInfo& s = shards[i];
        std::string where = "shards[" + std::to_string(i) + "] (" + json_quote(s.name) + ")";
        if (s.name.empty()) return invalid(origin, where, "empty name");
        if (s.name.find('/') != std::string::npos || s.name == "." || s.name == ".." ||
            s.name.find('\0') != std::string::npos)
            return invalid(origin, where, "a shard name must be a single file name (no '/', '.' or '..')");
        if (!shard_names.insert(s.name).second) return invalid(origin, where, "duplicate shard name");
        if (s.location.empty()) return invalid(origin, where, "empty location");
        if (is_url(s.location) && s.location.rfind("http://", 0) != 0 && s.location.rfind("https://", 0) != 0)
            return invalid(origin, where, "unsupported location scheme (use http://, https:// or a path)");
        std::uint64_t expected = block_count(s.size, block_size);
        if (s.blocks.size() != expected)
            return invalid(origin, where,
                           "has " + std::to_string(s.blocks.size()) + " block hashes, expected " +
                               std::to_string(expected) + " for size " + std::to_string(s.size));
    }

    std::unordered_set<std::string_view> files;
    std::unordered_set<std::string_view> dirs;
    files.reserve(samples.size());
    for (std::size_t i = 0; i < samples.size(); ++i) {
        const SampleInfo& s = samples[i];
        std::string where = "samples[" + std::to_string(i) + "] (" + json_quote(s.path) + ")";
        if (auto ok = check_path(origin, where, s.path); !ok) return ok;
        if (s.shard >= shards.size())
            return invalid(origin, where,
                           "shard " + std::to_string(s.shard) + " does not exist (the manifest has " +
                               std::to_string(shards.size()) + ")");
        const ShardInfo& shard = shards[s.shard];
        if (s.offset > shard.size || s.size > shard.size - s.offset)
            return invalid(origin, where,
                           "range " + std::to_string(s.offset) + "+" + std::to_string(s.size) + " lies outside shard " +
                               json_quote(shard.name) + " of size " + std::to_string(shard.size));
        if (!files.insert(s.path).second) return invalid(origin, where, "duplicate path");
        std::string_view path = s.path;
        for (std::size_t slash = path.find('/'); slash != std::string_view::npos; slash = path.find('/', slash + 1))
            dirs.insert(path.substr(0, slash));
    }
    for (std::size_t i = 0; i < samples.size(); ++i) {
        if (dirs.count(samples[i].path) != 0)
            return invalid(origin, "samples[" + std::to_string(i) + "] (" + json_quote(samples[i].path) + ")",
                           "path is both a file and a directory");
    }
    return {};
}

std::string Manifest::to_json() const {
    using Ordered = nlohmann::ordered_json;
    // One shard or sample per line: diffable, and still compact for big manifests.
    std::string out = "{\n  \"format\": \"shelbyfs-manifest\",\n  \"version\": " + std::to_string(version) +
                      ",\n  \"block_size\": " + std::to_string(block_size) + ",\n  \"shards\": [";
    for (std::size_t i = 0; i < shards.size(); ++i) {
        const ShardInfo& s = shards[i];
        Ordered blocks = Ordered::array();
        for (const ContentHash& b : s.blocks) blocks.push_back(b.hex());
        Ordered entry = {{"name", s.name},
                         {"location", s.location},
                         {"size", s.size},
                         {"xxh3_128", s.hash.hex()},
                         {"blocks", std::move(blocks)}};
        out += (i == 0 ? "\n    " : ",\n    ") + entry.dump();
    }
    out += shards.empty() ? "],\n  \"samples\": [" : "\n  ],\n  \"samples\": [";
    for (std::size_t i = 0; i < samples.size(); ++i) {
        const SampleInfo& s = samples[i];
        Ordered entry = {{"path", s.path},
                         {"shard", s.shard},
                         {"offset", s.offset},
                         {"size", s.size},
                         {"xxh3_128", s.hash.hex()}};
        out += (i == 0 ? "\n    " : ",\n    ") + entry.dump();
    }
    out += samples.empty() ? "]\n}\n" : "\n  ]\n}\n";
    return out;
}

bool is_url(std::string_view location) {
    auto pos = location.find("://");
    if (pos == std::string_view::npos || pos == 0) return false;
    for (std::size_t i = 0; i < pos; ++i) {
        char c = location[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (i > 0 && ((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'));
        if (!ok) return false;
    }
    return true;
}

std::string resolve_location(std::string_view manifest_location, std::string_view location) {
    if (is_url(location)) return std::string(location);
    if (is_url(manifest_location)) {
        std::string_view base = manifest_location.substr(0, manifest_location.find_first_of("?#"));
        std::size_t authority = base.find("://") + 3;
        if (!location.empty() && location.front() == '/') {
            std::size_t path_start = base.find('/', authority);
            return std::string(base.substr(0, path_start)) + std::string(location);
        }
        std::size_t slash = base.rfind('/');
        if (slash == std::string_view::npos || slash < authority) return std::string(base) + "/" + std::string(location);
        return std::string(base.substr(0, slash + 1)) + std::string(location);
    }
    if (!location.empty() && location.front() == '/') return std::string(location);
    std::size_t slash = manifest_location.rfind('/');
    if (slash == std::string_view::npos) return std::string(location);
    return std::string(manifest_location.substr(0, slash + 1)) + std::string(location);
}

}  // namespace shelbyfs
