// S3 over HttpClient: canonical URLs for libcurl 7.88's SigV4, ListObjectsV2
// parsing, multipart upload, and the S3 BlobReader/ObjectStore.
#include "shelbyfs/s3.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <deque>
#include <random>

#include "shelbyfs/log.h"
#include "shelbyfs/units.h"

namespace shelbyfs {

namespace {

constexpr std::string_view kScheme = "s3://";
constexpr std::uint64_t kMinPartSize = 5ull << 20;
constexpr std::uint64_t kMaxParts = 10000;

std::future<Result<std::string>> ready(Result<std::string> r) {
    std::promise<Result<std::string>> p;
    p.set_value(std::move(r));
    return p.get_future();
}

// The text of each <tag>...</tag> in `xml`, in order (namespace-agnostic:
// S3 and s3rver use different xmlns, and prefixes are not used).
std::vector<std::string_view> xml_all(std::string_view xml, std::string_view tag) {
    std::vector<std::string_view> out;
    const std::string open = "<" + std::string(tag) + ">";
    const std::string close = "</" + std::string(tag) + ">";
    std::size_t pos = 0;
    for (;;) {
        const auto start = xml.find(open, pos);
        if (start == std::string_view::npos) break;
        const auto from = start + open.size();
        const auto end = xml.find(close, from);
        if (end == std::string_view::npos) break;
        out.push_back(xml.substr(from, end - from));
        pos = end + close.size();
    }
    return out;
}

std::string xml_first(std::string_view xml, std::string_view tag) {
    auto all = xml_all(xml, tag);
    return all.empty() ? std::string() : xml_unescape(all.front());
}

std::string xml_escape(std::string_view text) {
    std::string out;
    for (const char c : text) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '"': out += "&quot;"; break;
            case '\'': out += "&apos;"; break;
            default: out += c;
        }
    }
    return out;
}

// S3's rules, loosely (AWS's legacy buckets allow more): 3-63 of [a-z0-9.-_],
// also uppercase for s3rver/Akave compatibility. No '/' by construction.
bool valid_bucket(std::string_view b) {
    if (b.size() < 3 || b.size() > 63) return false;
    return std::all_of(b.begin(), b.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
               c == '_';
    });
}

// 16 random hex digits.
std::string random_token() {
    static constexpr char kHex[] = "0123456789abcdef";
    std::random_device device;
    std::uint64_t v = (std::uint64_t{device()} << 32) ^ device();
    std::string out;
    for (int i = 0; i < 16; ++i, v >>= 4) out += kHex[v & 0xf];
    return out;
}

std::string s3_name(const std::string& bucket, const std::string& key) {
    return std::string(kScheme) + bucket + "/" + printable_key(key);
}

}  // namespace

std::string xml_unescape(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '&') {
            out += text[i];
            continue;
        }
        const auto semi = text.find(';', i);
        if (semi == std::string_view::npos || semi - i > 10) {
            out += '&';
            continue;
        }
        const std::string_view ent = text.substr(i + 1, semi - i - 1);
        std::uint32_t cp = 0;
        bool numeric = false;
        if (ent == "amp") out += '&';
        else if (ent == "lt") out += '<';
        else if (ent == "gt") out += '>';
        else if (ent == "quot") out += '"';
        else if (ent == "apos") out += '\'';
        else if (ent.size() > 1 && ent[0] == '#') {
            const bool hex = ent[1] == 'x' || ent[1] == 'X';
            const std::string_view digits = ent.substr(hex ? 2 : 1);
            auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), cp, hex ? 16 : 10);
            if (ec != std::errc{} || p != digits.data() + digits.size() || cp > 0x10FFFF) {
                out += '&';
                continue;
            }
            numeric = true;
        } else {
            out += '&';
            continue;
        }
        if (numeric) {  // UTF-8
            if (cp < 0x80) {
                out += static_cast<char>(cp);
            } else if (cp < 0x800) {
                out += static_cast<char>(0xC0 | (cp >> 6));
                out += static_cast<char>(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                out += static_cast<char>(0xE0 | (cp >> 12));
                out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
                out += static_cast<char>(0x80 | (cp & 0x3F));
            } else {
                out += static_cast<char>(0xF0 | (cp >> 18));
                out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
                out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
                out += static_cast<char>(0x80 | (cp & 0x3F));
            }
        }
        i = semi;
    }
    return out;
}

std::string canonical_query(std::vector<std::pair<std::string, std::string>> params) {
    for (auto& [k, v] : params) {
        k = uri_encode(k, false);
        v = uri_encode(v, false);
    }
    std::sort(params.begin(), params.end());
    std::string out;
    for (const auto& [k, v] : params) {
        if (!out.empty()) out += '&';
        out += k + "=" + v;
    }
    return out;
}

Result<S3Url> parse_s3_url(std::string_view url) {
    if (url.substr(0, kScheme.size()) != kScheme) {
        return make_error(Errc::InvalidArgument, std::string(url) + ": not an s3:// URL");
    }
    const std::string_view rest = url.substr(kScheme.size());
    const auto slash = rest.find('/');
    S3Url out;
    out.bucket = std::string(rest.substr(0, slash));
    if (slash != std::string_view::npos) out.key = std::string(rest.substr(slash + 1));
    if (out.bucket.empty()) return make_error(Errc::InvalidArgument, std::string(url) + ": no bucket name");
    if (!valid_bucket(out.bucket)) {
        return make_error(Errc::InvalidArgument, std::string(url) + ": bad bucket name '" + out.bucket +
                                                     "' (3-63 letters, digits, '.', '-', '_')");
    }
    if (out.key.find('\0') != std::string::npos) {
        return make_error(Errc::InvalidArgument, printable_key(url) + ": key has a NUL byte");
    }
    return out;
}

const std::string* S3Head::meta(std::string_view name) const {
    for (const auto& [k, v] : metadata) {
        if (k == name) return &v;
    }
    return nullptr;
}

S3Client::S3Client(HttpClient& http, S3Settings settings) : http_(http), settings_(std::move(settings)) {
    while (!settings_.endpoint.empty() && settings_.endpoint.back() == '/') settings_.endpoint.pop_back();
    settings_.part_size = std::max(settings_.part_size, kMinPartSize);
    settings_.parts_in_flight = std::clamp(settings_.parts_in_flight, 1, 64);
    if (!settings_.access_key_id.empty()) {
        auto sig = std::make_shared<AwsSigV4>();
        sig->region = settings_.region.empty() ? "us-east-1" : settings_.region;
        sig->service = "s3";
        sig->access_key_id = settings_.access_key_id;
        sig->secret_access_key = settings_.secret_access_key;
        sigv4_ = std::move(sig);
    }
}

std::string S3Client::bucket_url(const std::string& bucket) const {
    return settings_.endpoint + "/" + uri_encode(bucket, false);
}

std::string S3Client::object_url(const std::string& bucket, const std::string& key) const {
    return bucket_url(bucket) + "/" + uri_encode(key, true);
}

std::string S3Client::where(const std::string& bucket, const std::string& key) const {
    return s3_name(bucket, key) + " (" + settings_.endpoint + ")";
}

std::string S3Client::hint(const Error& error) const {
    if (sigv4_ || error.message.find("HTTP 403") == std::string::npos) return {};
    return "; no S3 credentials are configured (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or choose a "
           "profile with --profile)";
}

RequestOptions S3Client::options(std::vector<std::string> extra) const {
    RequestOptions o;
    o.headers = std::move(extra);
    // libcurl 7.88 signs the hash of an empty body for streamed uploads unless
    // this header is present; S3, Akave and s3rver all require it.
    o.headers.emplace_back("x-amz-content-sha256: UNSIGNED-PAYLOAD");
    if (!settings_.session_token.empty() && sigv4_) o.headers.push_back("x-amz-security-token: " + settings_.session_token);
    o.sigv4 = sigv4_;
    return o;
}

Result<HttpResponse> S3Client::call(HttpRequest request) { return http_.send(std::move(request)).get(); }

std::future<Result<std::string>> S3Client::read_range(const std::string& bucket, const std::string& key,
                                                      std::uint64_t offset, std::uint64_t length) {
    return http_.read_range(object_url(bucket, key), offset, length, options());
}

Result<S3Head> S3Client::head(const std::string& bucket, const std::string& key) {
    HttpRequest req;
    req.method = "HEAD";
    req.url = object_url(bucket, key);
    req.options = options();
    auto r = call(std::move(req));
    if (!r) return make_error(r.error().code, "HEAD " + where(bucket, key) + ": " + r.error().message + hint(r.error()));
    S3Head head;
    const std::string* length = r->header("content-length");
    if (length == nullptr ||
        std::from_chars(length->data(), length->data() + length->size(), head.size).ec != std::errc{}) {
        return make_error(Errc::HttpStatus, "HEAD " + where(bucket, key) + ": no Content-Length in the answer");
    }
    if (const std::string* etag = r->header("etag")) head.etag = *etag;
    for (const auto& [name, value] : r->headers) {
        if (name.rfind("x-amz-meta-", 0) == 0) head.metadata.emplace_back(name.substr(11), value);
    }
    return head;
}

Result<std::string> S3Client::get(const std::string& bucket, const std::string& key) {
    auto r = http_.get(object_url(bucket, key), options()).get();
    if (!r) return make_error(r.error().code, "GET " + where(bucket, key) + ": " + r.error().message + hint(r.error()));
    return r;
}

Result<void> S3Client::put_bytes(const std::string& bucket, const std::string& key, std::string bytes,
                                 std::vector<std::string> headers) {
    HttpRequest req;
    req.method = "PUT";
    req.url = object_url(bucket, key);
    headers.insert(headers.end(), settings_.put_headers.begin(), settings_.put_headers.end());
    req.options = options(std::move(headers));
    req.body = std::make_shared<const std::string>(std::move(bytes));
    auto r = call(std::move(req));
    if (!r) return make_error(r.error().code, "PUT " + where(bucket, key) + ": " + r.error().message + hint(r.error()));
    return {};
}

Result<void> S3Client::put_file(const std::string& bucket, const std::string& key, const std::string& path,
                                std::vector<std::string> headers, const std::function<void(std::uint64_t)>& progress) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        return make_error(Errc::Io, "PUT " + where(bucket, key) + ": cannot stat " + path + ": " + std::strerror(errno));
    }
    const auto size = static_cast<std::uint64_t>(st.st_size);
    headers.insert(headers.end(), settings_.put_headers.begin(), settings_.put_headers.end());
    if (size >= settings_.multipart_threshold && size > kMinPartSize) {
        return put_multipart(bucket, key, path, size, headers, progress);
    }
    HttpRequest req;
    req.method = "PUT";
    req.url = object_url(bucket, key);
    req.options = options(std::move(headers));
    req.body_file = path;
    auto r = call(std::move(req));
    if (!r) return make_error(r.error().code, "PUT " + where(bucket, key) + ": " + r.error().message + hint(r.error()));
    if (progress) progress(size);
    return {};
}

Result<void> S3Client::put_multipart(const std::string& bucket, const std::string& key, const std::string& path,
                                     std::uint64_t size, const std::vector<std::string>& headers,
                                     const std::function<void(std::uint64_t)>& progress) {
    const std::string name = where(bucket, key);
    std::uint64_t part_size = settings_.part_size;
    if ((size + part_size - 1) / part_size > kMaxParts) {
        part_size = ((size + kMaxParts - 1) / kMaxParts + (1 << 20) - 1) & ~std::uint64_t{(1 << 20) - 1};
    }
    const std::uint64_t part_count = (size + part_size - 1) / part_size;

    HttpRequest create;
    create.method = "POST";
    create.url = object_url(bucket, key) + "?" + canonical_query({{"uploads", ""}});
    auto create_headers = headers;
    create_headers.emplace_back("Content-Type: application/octet-stream");
    // Marks this very upload, so a complete whose answer is lost can be told
    // apart from an older object of the same size under the same key.
    const std::string upload_token = random_token();
    create_headers.push_back("x-amz-meta-shelbyfs-upload: " + upload_token);
    create.options = options(std::move(create_headers));
    auto created = call(std::move(create));
    if (!created) {
        return make_error(created.error().code, "multipart upload of " + name + ": create: " + created.error().message +
                                                    hint(created.error()));
    }
    const std::string upload_id = xml_first(created->body, "UploadId");
    if (upload_id.empty()) {
        return make_error(Errc::HttpStatus, "multipart upload of " + name + ": create: no UploadId in the answer");
    }
    const std::string id_query = canonical_query({{"uploadId", upload_id}});
    auto abort = [&](Error error) -> Result<void> {
        HttpRequest del;
        del.method = "DELETE";
        del.url = object_url(bucket, key) + "?" + id_query;
        del.options = options();
        auto r = call(std::move(del));
        if (!r) log::debug("s3", "abort of multipart upload " + upload_id + " failed: " + r.error().message);
        return error;
    };

    // Parts go in order, parts_in_flight at a time; HttpClient retries each.
    std::vector<std::string> etags(part_count);
    std::deque<std::pair<std::uint64_t, std::future<Result<HttpResponse>>>> in_flight;
    std::uint64_t next = 0;
    std::uint64_t sent = 0;
    std::optional<Error> failure;
    while ((next < part_count && !failure) || !in_flight.empty()) {
        while (!failure && next < part_count && in_flight.size() < static_cast<std::size_t>(settings_.parts_in_flight)) {
            HttpRequest part;
            part.method = "PUT";
            part.url = object_url(bucket, key) + "?" +
                       canonical_query({{"partNumber", std::to_string(next + 1)}, {"uploadId", upload_id}});
            part.options = options();
            part.body_file = path;
            part.file_offset = next * part_size;
            part.file_length = std::min(part_size, size - part.file_offset);
            in_flight.emplace_back(next, http_.send(std::move(part)));
            ++next;
        }
        auto [index, future] = std::move(in_flight.front());
        in_flight.pop_front();
        auto r = future.get();
        if (!r) {
            if (!failure) {
                failure = make_error(r.error().code, "multipart upload of " + name + ": part " +
                                                         std::to_string(index + 1) + " of " +
                                                         std::to_string(part_count) + ": " + r.error().message);
            }
            continue;
        }
        const std::string* etag = r->header("etag");
        if (etag == nullptr || etag->empty()) {
            if (!failure) {
                failure = make_error(Errc::HttpStatus, "multipart upload of " + name + ": part " +
                                                           std::to_string(index + 1) + ": no ETag in the answer");
            }
            continue;
        }
        etags[index] = *etag;
        parts_.fetch_add(1, std::memory_order_relaxed);
        sent += std::min(part_size, size - index * part_size);
        if (progress) progress(sent);
    }
    if (failure) return abort(std::move(*failure));

    std::string body = "<CompleteMultipartUpload>";
    for (std::uint64_t i = 0; i < part_count; ++i) {
        body += "<Part><PartNumber>" + std::to_string(i + 1) + "</PartNumber><ETag>" + xml_escape(etags[i]) +
                "</ETag></Part>";
    }
    body += "</CompleteMultipartUpload>";
    HttpRequest complete;
    complete.method = "POST";
    complete.url = object_url(bucket, key) + "?" + id_query;
    complete.options = options({"Content-Type: application/xml"});
    complete.body = std::make_shared<const std::string>(std::move(body));
    auto done = call(std::move(complete));
    if (done && done->body.find("<Error>") == std::string::npos) {
        multipart_uploads_.fetch_add(1, std::memory_order_relaxed);
        return {};
    }
    // A complete whose answer was lost (or an error in a 200 body, which S3
    // sends when it fails late): the object may still be whole. Check.
    const std::string why = done ? xml_first(done->body, "Code") + ": " + xml_first(done->body, "Message")
                                 : done.error().message;
    auto head_now = head(bucket, key);
    const std::string* token = head_now ? head_now->meta("shelbyfs-upload") : nullptr;
    if (head_now && head_now->size == size && token != nullptr && *token == upload_token) {
        log::warn("s3", "multipart upload of " + name + ": complete reported '" + why +
                            "', but this upload is there (size and upload token match); accepting it");
        multipart_uploads_.fetch_add(1, std::memory_order_relaxed);
        return {};
    }
    return abort(make_error(done ? Errc::HttpStatus : done.error().code,
                            "multipart upload of " + name + ": complete: " + why));
}

Result<std::vector<S3ListEntry>> S3Client::list(const std::string& bucket, const std::string& prefix,
                                                const std::string& delimiter, std::vector<std::string>* common_prefixes) {
    std::vector<S3ListEntry> out;
    std::string token;
    for (int page = 0; page < 1'000'000; ++page) {
        std::vector<std::pair<std::string, std::string>> params{{"list-type", "2"}, {"prefix", prefix}};
        if (!delimiter.empty()) params.emplace_back("delimiter", delimiter);
        if (!token.empty()) params.emplace_back("continuation-token", token);
        auto r = http_.get(bucket_url(bucket) + "?" + canonical_query(std::move(params)), options()).get();
        if (!r) {
            return make_error(r.error().code, "list " + s3_name(bucket, prefix) + " (" + settings_.endpoint +
                                                  "): " + r.error().message + hint(r.error()));
        }
        for (std::string_view contents : xml_all(*r, "Contents")) {
            S3ListEntry entry;
            entry.key = xml_first(contents, "Key");
            const std::string size = xml_first(contents, "Size");
            std::from_chars(size.data(), size.data() + size.size(), entry.size);
            out.push_back(std::move(entry));
        }
        if (common_prefixes != nullptr) {
            for (std::string_view cp : xml_all(*r, "CommonPrefixes")) common_prefixes->push_back(xml_first(cp, "Prefix"));
        }
        if (xml_first(*r, "IsTruncated") != "true") return out;
        std::string next = xml_first(*r, "NextContinuationToken");
        if (next.empty() || next == token) {
            return make_error(Errc::HttpStatus, "list " + s3_name(bucket, prefix) +
                                                    ": truncated listing without a new continuation token");
        }
        token = std::move(next);
    }
    return make_error(Errc::HttpStatus, "list " + s3_name(bucket, prefix) + ": too many pages");
}

S3Client::Stats S3Client::stats() const {
    return {multipart_uploads_.load(std::memory_order_relaxed), parts_.load(std::memory_order_relaxed)};
}

std::future<Result<std::string>> S3Reader::read_range(const std::string& location, std::uint64_t offset,
                                                      std::uint64_t length) {
    auto url = parse_s3_url(location);
    if (!url) return ready(std::move(url).error());
    if (url->key.empty()) return ready(make_error(Errc::InvalidArgument, location + ": no object key"));
    return client_.read_range(url->bucket, url->key, offset, length);
}

namespace {

class S3Store final : public ObjectStore {
public:
    S3Store(S3Client& client, S3Url base, std::string scheme_base)
        : client_(client), bucket_(std::move(base.bucket)), prefix_(std::move(base.key)) {
        if (!prefix_.empty() && prefix_.back() != '/') prefix_ += '/';
        scheme_base_ = scheme_base.empty() ? std::string(kScheme) + bucket_ + "/" + prefix_ : std::move(scheme_base);
        if (scheme_base_.back() != '/') scheme_base_ += '/';
    }

    std::string describe() const override { return scheme_base_; }
    std::string location(const std::string& key) const override { return scheme_base_ + key; }

    Result<void> put_file(const std::string& key, const std::string& path) override {
        if (auto ok = check_object_key(key, describe()); !ok) return ok;
        return client_.put_file(bucket_, prefix_ + key, path);
    }
    Result<void> put_bytes(const std::string& key, const std::string& bytes) override {
        if (auto ok = check_object_key(key, describe()); !ok) return ok;
        return client_.put_bytes(bucket_, prefix_ + key, bytes);
    }
    Result<std::uint64_t> head(const std::string& key) override {
        if (auto ok = check_object_key(key, describe()); !ok) return std::move(ok).error();
        auto h = client_.head(bucket_, prefix_ + key);
        if (!h) return std::move(h).error();
        return h->size;
    }
    Result<std::string> get(const std::string& key) override {
        if (auto ok = check_object_key(key, describe()); !ok) return std::move(ok).error();
        return client_.get(bucket_, prefix_ + key);
    }
    Result<std::vector<std::string>> list(const std::string& prefix) override {
        if (auto ok = check_list_prefix(prefix, describe()); !ok) return std::move(ok).error();
        const std::string full = prefix_ + prefix;
        auto entries = client_.list(bucket_, full, "/");
        if (!entries) return std::move(entries).error();
        std::vector<std::string> names;
        for (auto& e : *entries) {
            if (e.key.size() <= full.size() || e.key.compare(0, full.size(), full) != 0) continue;
            std::string name = e.key.substr(full.size());
            if (is_listable_key_name(name)) names.push_back(std::move(name));
        }
        std::sort(names.begin(), names.end());
        names.erase(std::unique(names.begin(), names.end()), names.end());
        return names;
    }

private:
    S3Client& client_;
    std::string bucket_;
    std::string prefix_;       // "" or ends in '/'
    std::string scheme_base_;  // ends in '/'
};

}  // namespace

std::unique_ptr<ObjectStore> make_s3_store(S3Client& client, S3Url base, std::string scheme_base) {
    return std::make_unique<S3Store>(client, std::move(base), std::move(scheme_base));
}

}  // namespace shelbyfs
