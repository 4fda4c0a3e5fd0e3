// Checkpoint index records: JSON form, keys, version names.
#include "shelbyfs/checkpoint_index.h"

#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>

namespace shelbyfs {

namespace {

using json = nlohmann::json;

const char* kind_name(IndexOp::Kind k) {
    switch (k) {
        case IndexOp::Kind::Put: return "put";
        case IndexOp::Kind::Meta: return "meta";
        case IndexOp::Kind::Unlink: return "unlink";
        case IndexOp::Kind::Mkdir: return "mkdir";
        case IndexOp::Kind::Rmdir: return "rmdir";
    }
    return "?";
}

// xattr values are arbitrary bytes: stored as lowercase hex.
std::string to_hex(std::string_view bytes) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char c : bytes) {
        out.push_back(digits[c >> 4]);
        out.push_back(digits[c & 15]);
    }
    return out;
}

bool from_hex(std::string_view hex, std::string* out) {
    if (hex.size() % 2 != 0) return false;
    auto value = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    out->clear();
    for (std::size_t i = 0; i < hex.size(); i += 2) {
        int hi = value(hex[i]), lo = value(hex[i + 1]);
        if (hi < 0 || lo < 0) return false;
        out->push_back(static_cast<char>(hi * 16 + lo));
    }
    return true;
}

Error bad(std::string_view origin, const std::string& what) {
    return make_error(Errc::InvalidArgument, std::string(origin) + ": " + what);
}

}  // namespace

bool valid_checkpoint_path(std::string_view path) {
    if (path.empty() || path.front() == '/' || path.find('\0') != std::string_view::npos) return false;
    std::size_t start = 0;
    while (true) {
        std::size_t slash = path.find('/', start);
        std::string_view part = path.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
        if (part.empty() || part == "." || part == ".." || part.size() > 255) return false;
        if (slash == std::string_view::npos) return true;
        start = slash + 1;
    }
}

std::string object_key(const ContentHash& hash) { return std::string(kObjectsPrefix) + hash.hex(); }

std::string version_name(std::int64_t time_ns, const ContentHash& hash) {
    std::time_t seconds = static_cast<std::time_t>(time_ns / 1'000'000'000);
    long micros = static_cast<long>((time_ns % 1'000'000'000) / 1000);
    std::tm tm{};
    gmtime_r(&seconds, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d%02d%02dT%02d%02d%02d.%06ldZ-", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, micros);
    return buf + hash.hex().substr(0, 16);
}

std::string IndexRecord::key() const {
    char buf[96];
    std::snprintf(buf, sizeof buf, "%020" PRId64 "-", time_ns);
    char seqbuf[32];
    std::snprintf(seqbuf, sizeof seqbuf, "-%08" PRIu64 ".json", seq);
    return std::string(kIndexPrefix) + buf + writer + seqbuf;
}

std::string IndexRecord::to_json() const {
    json ops_json = json::array();
    for (const IndexOp& op : ops) {
        json o;
        o["op"] = kind_name(op.kind);
        o["path"] = op.path;
        if (op.kind == IndexOp::Kind::Put || op.kind == IndexOp::Kind::Meta) {
            o["hash"] = op.object.hash.hex();
            o["mode"] = op.mode;
            o["mtime_ns"] = op.mtime_ns;
            json x = json::object();
            for (const auto& [name, value] : op.xattrs) x[name] = to_hex(value);
            o["xattrs"] = std::move(x);
        }
        if (op.kind == IndexOp::Kind::Put) {
            o["size"] = op.object.size;
            o["block_size"] = op.object.block_size;
            json blocks = json::array();
            for (const ContentHash& h : op.object.blocks) blocks.push_back(h.hex());
            o["blocks"] = std::move(blocks);
        }
        if (op.kind == IndexOp::Kind::Mkdir) o["mode"] = op.mode;
        ops_json.push_back(std::move(o));
    }
    json doc;
    doc["format"] = kIndexFormat;
    doc["version"] = kIndexVersion;
    doc["time_ns"] = time_ns;
    doc["writer"] = writer;
    doc["seq"] = seq;
    doc["ops"] = std::move(ops_json);
    // Paths and xattr names come from the kernel and may not be UTF-8:
    // replace rather than throw (such names are rejected before recording).
    return doc.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

Result<IndexRecord> IndexRecord::parse(std::string_view text, std::string_view origin) {
    json doc;
    try {
        doc = json::parse(text);
    } catch (const json::exception& e) {
        return bad(origin, std::string("not valid JSON: ") + e.what());
    }
    if (!doc.is_object()) return bad(origin, "not a JSON object");
    if (doc.value("format", "") != kIndexFormat) return bad(origin, "\"format\" is not \"shelbyfs-checkpoint-index\"");
    if (!doc.contains("version") || !doc["version"].is_number_integer() || doc["version"].get<int>() != kIndexVersion)
        return bad(origin, "unsupported \"version\" (this shelbyfs reads version 1)");
    IndexRecord r;
    try {
        r.time_ns = doc.at("time_ns").get<std::int64_t>();
        r.writer = doc.at("writer").get<std::string>();
        r.seq = doc.at("seq").get<std::uint64_t>();
        const json& ops = doc.at("ops");
        if (!ops.is_array()) return bad(origin, "\"ops\" is not an array");
        for (std::size_t i = 0; i < ops.size(); ++i) {
            const json& o = ops[i];
            std::string where = "ops[" + std::to_string(i) + "]";
            IndexOp op;
            std::string kind = o.at("op").get<std::string>();
            if (kind == "put") op.kind = IndexOp::Kind::Put;
            else if (kind == "meta") op.kind = IndexOp::Kind::Meta;
            else if (kind == "unlink") op.kind = IndexOp::Kind::Unlink;
            else if (kind == "mkdir") op.kind = IndexOp::Kind::Mkdir;
            else if (kind == "rmdir") op.kind = IndexOp::Kind::Rmdir;
            else return bad(origin, where + ": unknown op \"" + kind + "\"");
            op.path = o.at("path").get<std::string>();
            if (!valid_checkpoint_path(op.path)) return bad(origin, where + ": invalid path \"" + op.path + "\"");
            if (op.kind == IndexOp::Kind::Put || op.kind == IndexOp::Kind::Meta) {
                auto h = ContentHash::from_hex(o.at("hash").get<std::string>());
                if (!h) return bad(origin, where + ": \"hash\" is not 32 hex digits");
                op.object.hash = *h;
                op.mode = static_cast<mode_t>(o.at("mode").get<std::uint32_t>() & 07777);
                op.mtime_ns = o.at("mtime_ns").get<std::int64_t>();
                const json& x = o.at("xattrs");
                if (!x.is_object()) return bad(origin, where + ": \"xattrs\" is not an object");
                for (const auto& [name, value] : x.items()) {
                    std::string raw;
                    if (!value.is_string() || !from_hex(value.get<std::string>(), &raw))
                        return bad(origin, where + ": xattr \"" + name + "\" is not hex");
                    op.xattrs.emplace(name, std::move(raw));
                }
            }
            if (op.kind == IndexOp::Kind::Put) {
                op.object.size = o.at("size").get<std::uint64_t>();
                op.object.block_size = o.at("block_size").get<std::uint64_t>();
                if (op.object.block_size == 0) return bad(origin, where + ": \"block_size\" is 0");
                const json& blocks = o.at("blocks");
                if (!blocks.is_array()) return bad(origin, where + ": \"blocks\" is not an array");
                std::uint64_t want = (op.object.size + op.object.block_size - 1) / op.object.block_size;
                if (blocks.size() != want)
                    return bad(origin, where + ": " + std::to_string(blocks.size()) + " block hashes for " +
                                           std::to_string(want) + " blocks");
                for (const json& b : blocks) {
                    auto bh = ContentHash::from_hex(b.is_string() ? b.get<std::string>() : "");
                    if (!bh) return bad(origin, where + ": a block hash is not 32 hex digits");
                    op.object.blocks.push_back(*bh);
                }
            }
            if (op.kind == IndexOp::Kind::Mkdir && o.contains("mode"))
                op.mode = static_cast<mode_t>(o["mode"].get<std::uint32_t>() & 07777);
            r.ops.push_back(std::move(op));
        }
    } catch (const json::exception& e) {
        return bad(origin, std::string("missing or mistyped field: ") + e.what());
    }
    return r;
}

}  // namespace shelbyfs
