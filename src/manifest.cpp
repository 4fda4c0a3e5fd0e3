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

// What is wrong with a sample path, or nullptr if nothing is.
const char* path_problem(std::string_view path) {
    if (path.empty()) return "empty path";
    if (path.front() == '/') return "absolute path (must be relative)";
    if (path.find('\0') != std::string_view::npos) return "path contains a NUL byte";
    std::size_t start = 0;
    while (start <= path.size()) {
        std::size_t end = path.find('/', start);
        if (end == std::string_view::npos) end = path.size();
        std::string_view part = path.substr(start, end - start);
        if (part.empty()) return "path has an empty component";
        if (part == ".") return "path has a '.' component";
        if (part == "..") return "path has a '..' component";
        start = end + 1;
    }
    return nullptr;
}

std::uint64_t block_count(std::uint64_t size, std::uint64_t block_size) {
    return size / block_size + (size % block_size != 0 ? 1 : 0);
}

// One JSON value seen by the SAX reader, reduced to what the checks need.
// Duplicate keys overwrite, as they do in nlohmann's DOM.
struct Field {
    enum class Kind : std::uint8_t { Missing, String, Unsigned, Other };
    Kind kind = Kind::Missing;
    std::string text;
    std::uint64_t number = 0;

    void clear() { kind = Kind::Missing; }
};

// Builds a Manifest from nlohmann SAX events without a DOM. Each shard and
// sample is checked when its object closes; the first problem of each kind
// is kept and reported in the order the DOM-based reader used (syntax, top
// level, shards, samples), so messages do not depend on key order. After a
// problem the rest of the text is still scanned, because a syntax error
// anywhere takes precedence.
class ManifestReader {
public:
    using number_integer_t = Json::number_integer_t;
    using number_unsigned_t = Json::number_unsigned_t;
    using number_float_t = Json::number_float_t;
    using string_t = Json::string_t;
    using binary_t = Json::binary_t;

    explicit ManifestReader(std::string_view origin) : origin_(origin) {}

    bool null() { return scalar(Field::Kind::Other, nullptr, 0); }
    bool boolean(bool) { return scalar(Field::Kind::Other, nullptr, 0); }
    bool number_integer(number_integer_t) { return scalar(Field::Kind::Other, nullptr, 0); }
    bool number_unsigned(number_unsigned_t value) { return scalar(Field::Kind::Unsigned, nullptr, value); }
    bool number_float(number_float_t, const string_t&) { return scalar(Field::Kind::Other, nullptr, 0); }
    bool string(string_t& value) { return scalar(Field::Kind::String, &value, 0); }
    bool binary(binary_t&) { return scalar(Field::Kind::Other, nullptr, 0); }
    bool start_object(std::size_t) { return open(true); }
    bool start_array(std::size_t) { return open(false); }
    bool end_object() { return close(); }
    bool end_array() { return close(); }
    bool key(string_t& name) {
        key_ = slot_of(stack_.back(), name);
        return true;
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
        syntax_error_ = e.what();
        return false;
    }

    const std::string& syntax_error() const { return syntax_error_; }

    /// The manifest, or the first problem in the DOM reader's order. validate() is left to the caller.
    Result<Manifest> finish() && {
        if (!top_is_object_) return invalid(origin_, "top level", "not a JSON object");
        auto format = string_field(format_, "format", "top level");
        if (!format) return format.error();
        if (*format != kManifestFormat)
            return invalid(origin_, "top level",
                           "\"format\" is " + json_quote(*format) + ", expected \"shelbyfs-manifest\"");
        auto version = uint_field(version_, "version", "top level");
        if (!version) return version.error();
        if (*version != kManifestVersion)
            return invalid(origin_, "top level",
                           "unsupported version " + std::to_string(*version) + " (this shelbyfs reads version 1)");
        manifest_.version = static_cast<std::uint32_t>(*version);
        auto block_size = uint_field(block_size_, "block_size", "top level");
        if (!block_size) return block_size.error();
        manifest_.block_size = *block_size;
        if (!shards_is_array_) return invalid(origin_, "top level", "field \"shards\" is missing or not an array");
        if (!samples_is_array_) return invalid(origin_, "top level", "field \"samples\" is missing or not an array");
        if (shard_error_) return std::move(*shard_error_);
        if (sample_error_) return std::move(*sample_error_);
        manifest_.samples.shrink_to_fit();
        return std::move(manifest_);
    }

private:
    // Where a value lands. Entry slots index entry_[]; the shard slots and the
    // sample slots share indices because only one kind of entry is open at a time.
    enum class Ctx : std::uint8_t { Top, Shards, Samples, Shard, Sample, Blocks, Skip };
    enum Slot : int {
        kNone = -1,
        kFormat = 0, kVersion, kBlockSize, kShardsKey, kSamplesKey,                    // top level
        kName = 0, kLocation, kShardSize, kShardHash, kBlocksKey,                     // a shard
        kPath = 0, kShardIndex, kOffset, kSampleSize, kSampleHash,                    // a sample
    };

    static int slot_of(Ctx ctx, std::string_view name) {
        switch (ctx) {
            case Ctx::Top:
                if (name == "format") return kFormat;
                if (name == "version") return kVersion;
                if (name == "block_size") return kBlockSize;
                if (name == "shards") return kShardsKey;
                if (name == "samples") return kSamplesKey;
                return kNone;
            case Ctx::Shard:
                if (name == "name") return kName;
                if (name == "location") return kLocation;
                if (name == "size") return kShardSize;
                if (name == "xxh3_128") return kShardHash;
                if (name == "blocks") return kBlocksKey;
                return kNone;
            case Ctx::Sample:
                if (name == "path") return kPath;
                if (name == "shard") return kShardIndex;
                if (name == "offset") return kOffset;
                if (name == "size") return kSampleSize;
                if (name == "xxh3_128") return kSampleHash;
                return kNone;
            case Ctx::Shards:
            case Ctx::Samples:
            case Ctx::Blocks:
            case Ctx::Skip:
                return kNone;
        }
        return kNone;
    }

    static void set(Field& f, Field::Kind kind, const string_t* text, std::uint64_t number) {
        f.kind = kind;
        if (text != nullptr) f.text.assign(*text);
        f.number = number;
    }

    std::string where(const char* list, std::size_t index) const {
        return std::string(list) + "[" + std::to_string(index) + "]";
    }

    Result<std::string> string_field(const Field& f, const char* key, const std::string& at) const {
        if (f.kind != Field::Kind::String)
            return invalid(origin_, at, std::string("field \"") + key + "\" is missing or not a string");
        return f.text;
    }
    Result<std::uint64_t> uint_field(const Field& f, const char* key, const std::string& at) const {
        if (f.kind != Field::Kind::Unsigned)
            return invalid(origin_, at, std::string("field \"") + key + "\" is missing or not a non-negative integer");
        return f.number;
    }
    std::optional<Error> hash_field(const Field& f, const char* key, const std::string& at, ContentHash& out) const {
        if (f.kind != Field::Kind::String)
            return invalid(origin_, at, std::string("field \"") + key + "\" is missing or not a string");
        auto h = ContentHash::from_hex(f.text);
        if (!h) return invalid(origin_, at, std::string("field \"") + key + "\" is not 32 hex digits");
        out = *h;
        return std::nullopt;
    }

    // A scalar in the current context.
    bool scalar(Field::Kind kind, const string_t* text, std::uint64_t number) {
        if (stack_.empty()) return true;  // a scalar document: top_is_object_ stays false
        switch (stack_.back()) {
            case Ctx::Top:
                if (key_ == kShardsKey) shards_is_array_ = false;
                else if (key_ == kSamplesKey) samples_is_array_ = false;
                else if (key_ != kNone) set(top_[key_], kind, text, number);
                break;
            case Ctx::Shards: not_an_object(shard_error_, "shards", shard_count_++); break;
            case Ctx::Samples: not_an_object(sample_error_, "samples", sample_count_++); break;
            case Ctx::Shard:
                if (key_ == kBlocksKey) blocks_is_array_ = false;
                else if (key_ != kNone) set(entry_[key_], kind, text, number);
                break;
            case Ctx::Sample:
                if (key_ != kNone) set(entry_[key_], kind, text, number);
                break;
            case Ctx::Blocks: {
                auto h = kind == Field::Kind::String ? ContentHash::from_hex(*text) : std::nullopt;
                if (h) blocks_.push_back(*h);
                else if (!bad_block_) bad_block_ = block_count_;
                ++block_count_;
                break;
            }
            case Ctx::Skip: break;
        }
        return true;
    }

    bool open(bool is_object) {
        if (stack_.empty()) {
            top_is_object_ = is_object;
            stack_.push_back(is_object ? Ctx::Top : Ctx::Skip);
            return true;
        }
        Ctx next = Ctx::Skip;
        switch (stack_.back()) {
            case Ctx::Top:
                if (key_ == kShardsKey) {
                    shards_is_array_ = !is_object;
                    manifest_.shards.clear();
                    shard_error_.reset();
                    shard_count_ = 0;
                    if (!is_object) next = Ctx::Shards;
                } else if (key_ == kSamplesKey) {
                    samples_is_array_ = !is_object;
                    manifest_.samples.clear();
                    sample_error_.reset();
                    sample_count_ = 0;
                    if (!is_object) next = Ctx::Samples;
                } else if (key_ != kNone) {
                    top_[key_].kind = Field::Kind::Other;
                }
                break;
            case Ctx::Shards:
            case Ctx::Samples:
                if (is_object) {
                    for (Field& f : entry_) f.clear();
                    blocks_is_array_ = false;
                    next = stack_.back() == Ctx::Shards ? Ctx::Shard : Ctx::Sample;
                } else if (stack_.back() == Ctx::Shards) {
                    not_an_object(shard_error_, "shards", shard_count_++);
                } else {
                    not_an_object(sample_error_, "samples", sample_count_++);
                }
                break;
            case Ctx::Shard:
                if (key_ == kBlocksKey) {
                    blocks_is_array_ = !is_object;
                    blocks_.clear();
                    bad_block_.reset();
                    block_count_ = 0;
                    if (!is_object) next = Ctx::Blocks;
                } else if (key_ != kNone) {
                    entry_[key_].kind = Field::Kind::Other;
                }
                break;
            case Ctx::Sample:
                if (key_ != kNone) entry_[key_].kind = Field::Kind::Other;
                break;
            case Ctx::Blocks:
                if (!bad_block_) bad_block_ = block_count_;
                ++block_count_;
                break;
            case Ctx::Skip: break;
        }
        stack_.push_back(next);
        return true;
    }

    bool close() {
        Ctx done = stack_.back();
        stack_.pop_back();
        if (done == Ctx::Shard) finish_shard();
        else if (done == Ctx::Sample) finish_sample();
        // The key that led into a container is spent; the parent's next value needs a new key.
        key_ = kNone;
        return true;
    }

    void not_an_object(std::optional<Error>& first, const char* list, std::size_t index) {
        if (!first) first = invalid(origin_, where(list, index), "not a JSON object");
    }

    void finish_shard() {
        std::size_t index = shard_count_++;
        if (shard_error_) return;
        std::string at = where("shards", index);
        ShardInfo s;
        auto fail = [&](Error e) { shard_error_ = std::move(e); };
        auto name = string_field(entry_[kName], "name", at);
        if (!name) return fail(name.error());
        auto location = string_field(entry_[kLocation], "location", at);
        if (!location) return fail(location.error());
        auto size = uint_field(entry_[kShardSize], "size", at);
        if (!size) return fail(size.error());
        if (auto e = hash_field(entry_[kShardHash], "xxh3_128", at, s.hash)) return fail(std::move(*e));
        if (!blocks_is_array_) return fail(invalid(origin_, at, "field \"blocks\" is missing or not an array"));
        if (bad_block_)
            return fail(invalid(origin_, at, "blocks[" + std::to_string(*bad_block_) + "] is not 32 hex digits"));
        s.name = std::move(*name);
        s.location = std::move(*location);
        s.size = *size;
        s.blocks = std::move(blocks_);
        blocks_ = {};
        manifest_.shards.push_back(std::move(s));
    }

    void finish_sample() {
        std::size_t index = sample_count_++;
        if (sample_error_) return;
        Field& path = entry_[kPath];
        auto fail = [&](Error e) { sample_error_ = std::move(e); };
        if (path.kind != Field::Kind::String || entry_[kShardIndex].kind != Field::Kind::Unsigned ||
            entry_[kOffset].kind != Field::Kind::Unsigned || entry_[kSampleSize].kind != Field::Kind::Unsigned ||
            entry_[kSampleHash].kind != Field::Kind::String) {
            // The rare path: build the message the way the first failing field reports it.
            std::string at = where("samples", index);
            if (auto r = string_field(path, "path", at); !r) return fail(r.error());
            if (auto r = uint_field(entry_[kShardIndex], "shard", at); !r) return fail(r.error());
            if (auto r = uint_field(entry_[kOffset], "offset", at); !r) return fail(r.error());
            if (auto r = uint_field(entry_[kSampleSize], "size", at); !r) return fail(r.error());
        }
        SampleInfo s;
        if (auto e = hash_field(entry_[kSampleHash], "xxh3_128", where("samples", index), s.hash); e) {
            return fail(std::move(*e));
        }
        if (entry_[kShardIndex].number > std::numeric_limits<std::uint32_t>::max())
            return fail(invalid(origin_, where("samples", index) + " (" + json_quote(path.text) + ")",
                                "shard index out of range"));
        s.path = path.text;
        s.shard = static_cast<std::uint32_t>(entry_[kShardIndex].number);
        s.offset = entry_[kOffset].number;
        s.size = entry_[kSampleSize].number;
        manifest_.samples.push_back(std::move(s));
    }

    std::string_view origin_;
    Manifest manifest_;
    std::vector<Ctx> stack_;
    int key_ = kNone;
    std::string syntax_error_;

    bool top_is_object_ = false;
    Field top_[5];
    Field& format_ = top_[kFormat];
    Field& version_ = top_[kVersion];
    Field& block_size_ = top_[kBlockSize];
    bool shards_is_array_ = false;
    bool samples_is_array_ = false;

    Field entry_[5];  // the open shard or sample
    bool blocks_is_array_ = false;
    std::vector<ContentHash> blocks_;
    std::optional<std::size_t> bad_block_;
    std::size_t block_count_ = 0;

    std::size_t shard_count_ = 0;
    std::size_t sample_count_ = 0;
    std::optional<Error> shard_error_;
    std::optional<Error> sample_error_;
};

}  // namespace

Result<Manifest> Manifest::parse(std::string_view text, std::string_view origin) {
    // Streamed through a SAX handler: a DOM of a million samples costs about
    // 1 KiB each, ten times the Manifest itself.
    ManifestReader reader(origin);
    bool ok = Json::sax_parse(text.begin(), text.end(), &reader);
    if (!ok) {
        std::string what = reader.syntax_error();
        // Drop nlohmann's "[json.exception.parse_error.101] " prefix.
        if (auto pos = what.find("] "); pos != std::string::npos) what = what.substr(pos + 2);
        return make_error(Errc::InvalidArgument, std::string(origin) + ": not valid JSON (truncated?): " + what);
    }
    auto m = std::move(reader).finish();
    if (!m) return m;
    if (auto valid = m->validate(origin); !valid) return std::move(valid).error();
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
        if (is_url(s.location) && s.location.rfind("http://", 0) != 0 && s.location.rfind("https://", 0) != 0 &&
            s.location.rfind("s3://", 0) != 0 && s.location.rfind("shelby://", 0) != 0)
            return invalid(origin, where, "unsupported location scheme (use http://, https://, s3://, shelby:// or a path)");
        std::uint64_t expected = block_count(s.size, block_size);
        if (s.blocks.size() != expected)
            return invalid(origin, where,
                           "has " + std::to_string(s.blocks.size()) + " block hashes, expected " +
                               std::to_string(expected) + " for size " + std::to_string(s.size));
    }

    // The first sample that fails a per-sample check (path, shard, range)...
    std::size_t first_bad = samples.size();
    std::unordered_set<std::string_view> dirs;
    for (std::size_t i = 0; i < samples.size() && first_bad == samples.size(); ++i) {
        const SampleInfo& s = samples[i];
        const ShardInfo* shard = s.shard < shards.size() ? &shards[s.shard] : nullptr;
        if (path_problem(s.path) != nullptr || shard == nullptr || s.offset > shard->size ||
            s.size > shard->size - s.offset) {
            first_bad = i;
            break;
        }
        std::string_view path = s.path;
        for (std::size_t slash = path.find('/'); slash != std::string_view::npos; slash = path.find('/', slash + 1))
            dirs.insert(path.substr(0, slash));
    }
    // ...and the first one repeating an earlier path. Sorting (hash, path,
    // index) is several times faster than a million-node hash set and
    // needs a quarter of the memory.
    std::vector<std::pair<std::size_t, std::size_t>> keyed;  // (hash of path, index)
    keyed.reserve(first_bad);
    for (std::size_t i = 0; i < first_bad; ++i) keyed.emplace_back(std::hash<std::string_view>{}(samples[i].path), i);
    std::sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
        if (x.first != y.first) return x.first < y.first;
        if (int c = samples[x.second].path.compare(samples[y.second].path); c != 0) return c < 0;
        return x.second < y.second;
    });
    std::size_t first_duplicate = samples.size();
    for (std::size_t k = 1; k < keyed.size(); ++k) {
        if (keyed[k].first == keyed[k - 1].first && samples[keyed[k].second].path == samples[keyed[k - 1].second].path)
            first_duplicate = std::min(first_duplicate, keyed[k].second);
    }
    keyed = {};
    // Report whichever comes first, as a single in-order pass checking path,
    // shard, range and then duplicates would.
    if (first_duplicate < first_bad) {
        const SampleInfo& s = samples[first_duplicate];
        return invalid(origin, "samples[" + std::to_string(first_duplicate) + "] (" + json_quote(s.path) + ")",
                       "duplicate path");
    }
    if (first_bad < samples.size()) {
        std::size_t i = first_bad;
        const SampleInfo& s = samples[i];
        std::string where = "samples[" + std::to_string(i) + "] (" + json_quote(s.path) + ")";
        if (const char* problem = path_problem(s.path)) return invalid(origin, where, problem);
        if (s.shard >= shards.size())
            return invalid(origin, where,
                           "shard " + std::to_string(s.shard) + " does not exist (the manifest has " +
                               std::to_string(shards.size()) + ")");
        const ShardInfo& shard = shards[s.shard];
        return invalid(origin, where,
                       "range " + std::to_string(s.offset) + "+" + std::to_string(s.size) + " lies outside shard " +
                           json_quote(shard.name) + " of size " + std::to_string(shard.size));
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
        // Only http(s) URLs have a query or fragment; s3:// and shelby:// keys are raw
        // and may hold '?' and '#'.
        const bool http = manifest_location.rfind("http://", 0) == 0 || manifest_location.rfind("https://", 0) == 0;
        std::string_view base =
            http ? manifest_location.substr(0, manifest_location.find_first_of("?#")) : manifest_location;
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
