// Block fetching with single-flight and verification.
#include "shelbyfs/fetcher.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "shelbyfs/log.h"

namespace shelbyfs {

Fetcher::Fetcher(BlobReader& reader, BlockCache& cache, std::vector<ObjectSpec> objects, FetcherOptions options)
    : reader_(reader), cache_(cache), options_(options) {
    objects_.reserve(objects.size());
    for (ObjectSpec& o : objects) objects_.push_back(std::make_unique<const ObjectSpec>(std::move(o)));
}

std::uint32_t Fetcher::add_object(ObjectSpec spec) {
    auto owned = std::make_unique<const ObjectSpec>(std::move(spec));
    std::unique_lock lock(objects_mutex_);
    objects_.push_back(std::move(owned));
    return static_cast<std::uint32_t>(objects_.size() - 1);
}

const ObjectSpec* Fetcher::find(std::uint32_t index) const {
    std::shared_lock lock(objects_mutex_);
    return index < objects_.size() ? objects_[index].get() : nullptr;
}

const ObjectSpec& Fetcher::object(std::uint32_t index) const {
    const ObjectSpec* o = find(index);
    if (o == nullptr) throw std::out_of_range("Fetcher::object: no object " + std::to_string(index));
    return *o;
}

std::size_t Fetcher::object_count() const {
    std::shared_lock lock(objects_mutex_);
    return objects_.size();
}

std::uint64_t Fetcher::block_offset(const ObjectSpec& o, const BlockKey& key) { return key.index * o.block_size; }

std::uint64_t Fetcher::block_length(const ObjectSpec& o, const BlockKey& key) {
    return std::min(o.block_size, o.size - block_offset(o, key));
}

Fetcher::Slot Fetcher::acquire(const BlockKey& key) {
    Slot slot;
    slot.key = key;
    if ((slot.ready = cache_.get(key))) return slot;
    {
        std::lock_guard lock(inflight_mutex_);
        auto it = inflight_.find(key);
        if (it != inflight_.end()) {
            slot.pending = it->second.second;
            joined_.fetch_add(1, std::memory_order_relaxed);
            return slot;
        }
        // Re-check the cache under the lock: a leader may have published
        // between our miss and taking the lock.
        if ((slot.ready = cache_.get(key))) return slot;
        auto promise = std::make_unique<std::promise<Result<BlockPtr>>>();
        slot.lead = promise.get();
        slot.pending = promise->get_future().share();
        inflight_.emplace(key, std::make_pair(std::move(promise), slot.pending));
    }
    fetches_.fetch_add(1, std::memory_order_relaxed);
    try {
        const ObjectSpec& o = object(key.object);
        slot.first_attempt = reader_.read_range(o.location, block_offset(o, key), block_length(o, key));
    } catch (...) {
        // Never leave a registered fetch unresolved: joiners would wait for ever.
        publish(slot, make_error(Errc::Internal, "fetch: starting the request failed (F04)"));
        throw;
    }
    return slot;
}

Result<BlockPtr> Fetcher::verify_or_refetch(const BlockKey& key, std::future<Result<std::string>> attempt) {
    const ObjectSpec& o = object(key.object);
    std::uint64_t offset = block_offset(o, key);
    std::uint64_t length = block_length(o, key);
    std::string range = "bytes " + std::to_string(offset) + "-" + std::to_string(offset + length - 1);
    for (int i = 1;; ++i) {
        Result<std::string> data = attempt.get();
        if (!data) {
            log::error("fetch", o.name + " " + range + ": " + data.error().message);
            // The object is named by the manifest, so "not found" or "bad
            // request" from the store is an I/O failure of this read (EIO),
            // not a missing file (ENOENT) or a caller error (EINVAL).
            Error e = std::move(data).error();
            if (e.code == Errc::NotFound || e.code == Errc::InvalidArgument) e.code = Errc::Io;
            return e;
        }
        bytes_fetched_.fetch_add(data->size(), std::memory_order_relaxed);
        ContentHash got = ContentHash::of(*data);
        if (got == o.blocks[key.index]) return std::make_shared<const std::string>(std::move(*data));
        integrity_failures_.fetch_add(1, std::memory_order_relaxed);
        std::string what = o.name + " " + range + ": hash mismatch (expected " + o.blocks[key.index].hex() +
                           ", got " + got.hex() + ")";
        if (i >= options_.integrity_attempts) {
            log::error("fetch", what + " after " + std::to_string(i) + " attempts; returning EIO");
            return make_error(Errc::Integrity, what);
        }
        log::warn("fetch", what + "; refetching");
        attempt = reader_.read_range(o.location, offset, length);
    }
}

Result<BlockPtr> Fetcher::complete(Slot& slot) {
    if (slot.ready) return slot.ready;
    if (slot.lead != nullptr) {
        Result<BlockPtr> result = make_error(Errc::Internal, "fetch: leader failed (F01)");
        try {
            result = verify_or_refetch(slot.key, std::move(slot.first_attempt));
        } catch (const std::exception& e) {
            result = make_error(Errc::Internal, std::string("fetch: ") + e.what() + " (F02)");
        }
        if (result) {
            try {
                cache_.insert(slot.key, *result);
            } catch (...) {
                // Not caching is fine; the bytes are still good for this read.
            }
        }
        publish(slot, result);
        return result;
    }
    return slot.pending.get();
}

void Fetcher::publish(Slot& slot, const Result<BlockPtr>& result) noexcept {
    std::unique_ptr<std::promise<Result<BlockPtr>>> promise;
    {
        std::lock_guard lock(inflight_mutex_);
        auto it = inflight_.find(slot.key);
        promise = std::move(it->second.first);
        inflight_.erase(it);
    }
    slot.lead = nullptr;
    try {
        promise->set_value(result);
    } catch (...) {
        // set_value only throws if already satisfied, which publish prevents.
    }
}

Result<std::size_t> Fetcher::read(std::uint32_t object, std::uint64_t offset, char* buffer, std::size_t size) {
    const ObjectSpec* spec = find(object);
    if (spec == nullptr) return make_error(Errc::Internal, "fetch: unknown object (F03)");
    const ObjectSpec& o = *spec;
    if (offset >= o.size || size == 0) return std::size_t{0};
    std::size_t length = static_cast<std::size_t>(std::min<std::uint64_t>(size, o.size - offset));
    std::uint64_t first = offset / o.block_size;
    std::uint64_t last = (offset + length - 1) / o.block_size;

    // Start every missing block first, so a multi-block read runs its
    // requests in parallel; then complete the ones we lead before waiting on
    // others' (a leader never waits on another fetch, so there is no cycle).
    std::vector<Slot> slots;
    slots.reserve(static_cast<std::size_t>(last - first + 1));
    // If anything below throws (allocation), resolve the fetches we lead so
    // that readers who joined them get an error instead of waiting for ever.
    struct LeadGuard {
        Fetcher& fetcher;
        std::vector<Slot>& slots;
        ~LeadGuard() {
            for (Slot& s : slots)
                if (s.lead != nullptr) fetcher.publish(s, make_error(Errc::Internal, "fetch: read aborted (F05)"));
        }
    } guard{*this, slots};
    for (std::uint64_t i = first; i <= last; ++i) slots.push_back(acquire(BlockKey{object, i}));
    std::vector<BlockPtr> blocks(slots.size());
    std::optional<Error> failure;
    for (std::size_t i = 0; i < slots.size(); ++i) {
        if (slots[i].lead == nullptr) continue;
        auto r = complete(slots[i]);
        if (r) blocks[i] = *r;
        else if (!failure) failure = r.error();
    }
    for (std::size_t i = 0; i < slots.size(); ++i) {
        if (blocks[i]) continue;
        auto r = complete(slots[i]);
        if (r) blocks[i] = *r;
        else if (!failure) failure = r.error();
    }
    if (failure) return *failure;

    std::size_t copied = 0;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        std::uint64_t block_start = (first + i) * o.block_size;
        std::uint64_t from = std::max(offset, block_start) - block_start;
        std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(blocks[i]->size() - from, length - copied));
        std::memcpy(buffer + copied, blocks[i]->data() + from, n);
        copied += n;
    }
    return copied;
}

Fetcher::Stats Fetcher::stats() const {
    return Stats{fetches_.load(), joined_.load(), integrity_failures_.load(), bytes_fetched_.load()};
}

}  // namespace shelbyfs
