// XXH3-128 wrapper: the only file that includes xxhash.h.
#include "shelbyfs/hash.h"

#include <xxhash.h>

#include <cstdio>

namespace shelbyfs {

namespace {
ContentHash from_xxh(XXH128_hash_t h) { return ContentHash{h.high64, h.low64}; }

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}
}  // namespace

std::string ContentHash::hex() const {
    char buf[33];
    std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(high),
                  static_cast<unsigned long long>(low));
    return std::string(buf, 32);
}

std::optional<ContentHash> ContentHash::from_hex(std::string_view text) {
    if (text.size() != 32) return std::nullopt;
    ContentHash h;
    for (std::size_t i = 0; i < 32; ++i) {
        int v = hex_value(text[i]);
        if (v < 0) return std::nullopt;
        std::uint64_t& word = i < 16 ? h.high : h.low;
        word = (word << 4) | static_cast<std::uint64_t>(v);
    }
    return h;
}

ContentHash ContentHash::of(const void* data, std::size_t size) { return from_xxh(XXH3_128bits(data, size)); }

struct Hasher::Impl {
    XXH3_state_t* state = XXH3_createState();
    ~Impl() { XXH3_freeState(state); }
};

Hasher::Hasher() : impl_(std::make_unique<Impl>()) {
    if (impl_->state == nullptr) throw std::bad_alloc();
    reset();
}
Hasher::~Hasher() = default;
void Hasher::update(const void* data, std::size_t size) { XXH3_128bits_update(impl_->state, data, size); }
ContentHash Hasher::digest() const { return from_xxh(XXH3_128bits_digest(impl_->state)); }
void Hasher::reset() { XXH3_128bits_reset(impl_->state); }

}  // namespace shelbyfs
