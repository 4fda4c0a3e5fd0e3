// Storage: location routing over the HTTP, S3 and Shelby backends.
#include "shelbyfs/storage.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "shelbyfs/manifest.h"
#include "shelbyfs/s3.h"
#include "shelbyfs/shelby.h"

namespace shelbyfs {

namespace {

bool has_prefix(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }
bool is_http(std::string_view s) { return has_prefix(s, "http://") || has_prefix(s, "https://"); }

}  // namespace

bool is_supported_scheme(std::string_view location) {
    return is_http(location) || has_prefix(location, "s3://") || has_prefix(location, "shelby://");
}

class Storage::Router final : public BlobReader {
public:
    explicit Router(Storage& storage) : storage_(storage), s3_reader_(storage.s3()) {}
    std::future<Result<std::string>> read_range(const std::string& location, std::uint64_t offset,
                                                std::uint64_t length) override {
        if (is_http(location)) return storage_.http_.read_range(location, offset, length);
        if (has_prefix(location, "s3://")) return s3_reader_.read_range(location, offset, length);
        if (has_prefix(location, "shelby://")) return storage_.shelby().read_range(location, offset, length);
        if (is_url(location)) {
            std::promise<Result<std::string>> p;
            p.set_value(make_error(Errc::InvalidArgument,
                                   location + ": unsupported scheme (use http://, https://, s3://, shelby:// or a path)"));
            return p.get_future();
        }
        return files_.read_range(location, offset, length);
    }

private:
    Storage& storage_;
    S3Reader s3_reader_;
    FileReader files_;
};

Storage::Storage(HttpClient& http, Profile profile) : http_(http), profile_(std::move(profile)) {
    s3_ = std::make_unique<S3Client>(http_, profile_.s3);
    if (profile_.shelby.gateway) {
        // load_profile() has put the x-amz-meta-expiration-seconds header in its put_headers.
        gateway_ = std::make_unique<S3Client>(http_, *profile_.shelby.gateway);
    }
    shelby_ = std::make_unique<ShelbyReader>(http_, profile_.shelby);
    router_ = std::make_unique<Router>(*this);
}

Storage::~Storage() = default;

BlobReader& Storage::reader() { return *router_; }
S3Client& Storage::s3() { return *s3_; }
ShelbyReader& Storage::shelby() { return *shelby_; }
S3Client* Storage::shelby_gateway() { return gateway_.get(); }

Result<std::string> Storage::read_whole(const std::string& location) {
    if (is_http(location)) return http_.get(location).get();
    if (has_prefix(location, "s3://")) {
        auto url = parse_s3_url(location);
        if (!url) return std::move(url).error();
        return s3_->get(url->bucket, url->key);
    }
    if (has_prefix(location, "shelby://")) return shelby_->get(location);
    if (is_url(location)) {
        return make_error(Errc::InvalidArgument,
                          location + ": unsupported scheme (use http://, https://, s3://, shelby:// or a path)");
    }
    return read_local_file(location);
}

Result<std::unique_ptr<ObjectStore>> Storage::open_store(const std::string& location) {
    if (has_prefix(location, "s3://")) {
        auto url = parse_s3_url(location);
        if (!url) return std::move(url).error();
        if (url->key.find("//") != std::string::npos || has_prefix(url->key, "/")) {
            return make_error(Errc::InvalidArgument, location + ": the prefix has an empty segment");
        }
        return make_s3_store(*s3_, std::move(*url));
    }
    if (has_prefix(location, "shelby://")) return open_shelby_store(location, *shelby_, gateway_.get());
    return open_object_store(location, &http_);
}

Result<std::uint64_t> Storage::size_of(const std::string& location) {
    if (is_http(location)) return http_.head(location).get();
    if (has_prefix(location, "s3://")) {
        auto url = parse_s3_url(location);
        if (!url) return std::move(url).error();
        auto head = s3_->head(url->bucket, url->key);
        if (!head) return std::move(head).error();
        return head->size;
    }
    if (has_prefix(location, "shelby://")) {
        return make_error(Errc::NotSupported, location + ": the Shelby RPC cannot report a blob's size");
    }
    if (is_url(location)) return make_error(Errc::InvalidArgument, location + ": unsupported scheme");
    struct stat st {};
    if (::stat(location.c_str(), &st) != 0) {
        const int err = errno;
        return make_error(err == ENOENT ? Errc::NotFound : Errc::Io, location + ": " + std::strerror(err));
    }
    if (!S_ISREG(st.st_mode)) return make_error(Errc::InvalidArgument, location + ": not a regular file");
    return static_cast<std::uint64_t>(st.st_size);
}

}  // namespace shelbyfs
