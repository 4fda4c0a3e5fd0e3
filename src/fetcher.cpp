// Block fetching with single-flight, verification and sequential prefetch.
#include "shelbyfs/fetcher.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>

#include "shelbyfs/disk_cache.h"
#include "shelbyfs/log.h"

namespace shelbyfs {

namespace {

// A stream is sequential once this many reads have continued it: one read
// next to another is common among random reads of a small shard (8 streams,
// 3 blocks each, out of 64), two in a row on the same stream is not.
constexpr std::uint32_t kSequentialRuns = 2;
// The first window: two blocks cover the next read and the one after while
// the stream proves itself; it doubles per block advanced from there.
constexpr std::uint32_t kInitialWindow = 2;
// Queued prefetches over all objects; the byte budget normally binds first.
constexpr std::size_t kMaxQueued = 1024;
// How often a prefetch worker waiting on a request checks for shutdown: the
// bound on how long ~Fetcher waits for a stalled request.
constexpr auto kStopPoll = std::chrono::milliseconds(10);

// Wait for `f`; false if `stop` was requested first (the request is abandoned).
bool await(std::future<Result<std::string>>& f, const std::stop_token& stop) {
    if (!stop.stop_possible()) {
        f.wait();
        return true;
    }
    while (f.wait_for(kStopPoll) != std::future_status::ready)
        if (stop.stop_requested()) return false;
    return true;
}

}  // namespace

Fetcher::Fetcher(BlobReader& reader, BlockCache& cache, std::vector<ObjectSpec> objects, FetcherOptions options)
    : reader_(reader),
      cache_(cache),
      options_(options),
      prefetch_budget_(options.prefetch_budget_bytes != 0 ? options.prefetch_budget_bytes : cache.budget() / 4),
      dataset_objects_(objects.size()) {
    objects_.reserve(objects.size());
    for (ObjectSpec& o : objects) objects_.push_back(std::make_unique<const ObjectSpec>(std::move(o)));
}

Fetcher::~Fetcher() {
    std::vector<std::jthread> workers;
    {
        std::lock_guard lock(prefetch_mutex_);
        workers.swap(workers_);
    }
    for (auto& w : workers) w.request_stop();
    // Each worker fails its current prefetch (abandoning a request still on
    // the wire) and exits; the ones nobody started are failed here.
    workers.clear();
    std::deque<BlockKey> queued;
    {
        std::lock_guard lock(prefetch_mutex_);
        queued.swap(queue_);
        promoted_front_ = 0;
    }
    for (const BlockKey& key : queued) publish(key, make_error(Errc::Internal, "prefetch: cancelled (F07)"));
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
            slot.pending = it->second.result;
            slot.joined_prefetch = it->second.prefetch;
            joined_.fetch_add(1, std::memory_order_relaxed);
            return slot;
        }
        // Re-check the cache under the lock: a leader may have published
        // between our miss and taking the lock.
        if ((slot.ready = cache_.get(key))) return slot;
        auto promise = std::make_unique<std::promise<Result<BlockPtr>>>();
        slot.lead = promise.get();
        slot.pending = promise->get_future().share();
        inflight_.emplace(key, Inflight{std::move(promise), slot.pending, false});
    }
    try {
        const ObjectSpec& o = object(key.object);
        if ((slot.from_disk = load_from_disk(o, key))) return slot;
        fetches_.fetch_add(1, std::memory_order_relaxed);
        slot.first_attempt = reader_.read_range(o.location, block_offset(o, key), block_length(o, key));
    } catch (...) {
        // Never leave a registered fetch unresolved: joiners would wait for ever.
        publish(key, make_error(Errc::Internal, "fetch: starting the request failed (F04)"));
        slot.lead = nullptr;
        throw;
    }
    return slot;
}

BlockPtr Fetcher::load_from_disk(const ObjectSpec& o, const BlockKey& key) {
    if (options_.disk_cache == nullptr || key.index >= o.blocks.size()) return nullptr;
    auto data = options_.disk_cache->lookup(o.blocks[key.index], block_length(o, key));
    if (!data) return nullptr;
    return std::make_shared<const std::string>(std::move(*data));
}

Result<BlockPtr> Fetcher::verify_or_refetch(const BlockKey& key, std::future<Result<std::string>> attempt,
                                            Origin origin, std::stop_token stop) {
    const ObjectSpec& o = object(key.object);
    std::uint64_t offset = block_offset(o, key);
    std::uint64_t length = block_length(o, key);
    std::string range = "bytes " + std::to_string(offset) + "-" + std::to_string(offset + length - 1);
    // A failed prefetch fails no read (a reader fetches the block again), so
    // it is a warning; the demand fetch that follows logs its own outcome.
    bool demand = origin == Origin::Demand;
    auto give_up = [&](const std::string& what) {
        if (demand) log::error("fetch", what);
        else log::warn("prefetch", what + " (not cached; a read will fetch it again)");
    };
    for (int i = 1;; ++i) {
        if (!await(attempt, stop)) return make_error(Errc::Internal, "prefetch: cancelled (F07)");
        Result<std::string> data = attempt.get();
        if (!data) {
            give_up(o.name + " " + range + ": " + data.error().message);
            // The object is named by the manifest, so "not found" or "bad
            // request" from the store is an I/O failure of this read (EIO),
            // not a missing file (ENOENT) or a caller error (EINVAL).
            Error e = std::move(data).error();
            if (e.code == Errc::NotFound || e.code == Errc::InvalidArgument) e.code = Errc::Io;
            return e;
        }
        bytes_fetched_.fetch_add(data->size(), std::memory_order_relaxed);
        ContentHash got = ContentHash::of(*data);
        if (got == o.blocks[key.index]) {
            if (options_.disk_cache != nullptr) options_.disk_cache->insert(got, *data);
            return std::make_shared<const std::string>(std::move(*data));
        }
        integrity_failures_.fetch_add(1, std::memory_order_relaxed);
        std::string what = o.name + " " + range + ": hash mismatch (expected " + o.blocks[key.index].hex() +
                           ", got " + got.hex() + ")";
        if (i >= options_.integrity_attempts) {
            give_up(what + " after " + std::to_string(i) + " attempts" + (demand ? "; returning EIO" : ""));
            return make_error(Errc::Integrity, what);
        }
        log::warn(demand ? "fetch" : "prefetch", what + "; refetching");
        attempt = reader_.read_range(o.location, offset, length);
    }
}

Result<BlockPtr> Fetcher::complete(Slot& slot) {
    if (slot.ready) return slot.ready;
    if (slot.lead != nullptr) {
        Result<BlockPtr> result = make_error(Errc::Internal, "fetch: leader failed (F01)");
        try {
            result = slot.from_disk ? Result<BlockPtr>(std::move(slot.from_disk))
                                    : verify_or_refetch(slot.key, std::move(slot.first_attempt), Origin::Demand, {});
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
        publish(slot.key, result);
        slot.lead = nullptr;
        return result;
    }
    Result<BlockPtr> result = slot.pending.get();
    if (result || !slot.joined_prefetch) return result;
    // The prefetch we joined failed; its error is not ours. Fetch the block
    // on demand (leading, or joining whoever does) and report that outcome.
    Slot again = acquire(slot.key);
    again.joined_prefetch = false;  // one retry: a second failure is reported
    return complete(again);
}

void Fetcher::publish(const BlockKey& key, const Result<BlockPtr>& result) noexcept {
    std::unique_ptr<std::promise<Result<BlockPtr>>> promise;
    {
        std::lock_guard lock(inflight_mutex_);
        auto it = inflight_.find(key);
        promise = std::move(it->second.promise);
        inflight_.erase(it);
    }
    try {
        promise->set_value(result);
    } catch (...) {
        // set_value only throws if already satisfied, which publish prevents.
    }
}

void Fetcher::prefetch_after(std::uint32_t object, const ObjectSpec& o, std::uint64_t first,
                             std::uint64_t last) noexcept {
    try {
        std::uint64_t blocks = std::min<std::uint64_t>((o.size + o.block_size - 1) / o.block_size, o.blocks.size());
        std::lock_guard lock(prefetch_mutex_);
        if (!unread_.empty())
            for (std::uint64_t i = first; i <= last; ++i) consume_locked(BlockKey{object, i});
        ObjectStreams& os = streams_[object];
        ++os.clock;
        // The read continues a stream if it starts in, just before or just
        // after the stream's last block (reads of interleaved readers and of
        // the kernel's parallel readahead arrive a little out of order).
        Stream* s = nullptr;
        for (std::size_t i = 0; i < os.count; ++i) {
            Stream& c = os.streams[i];
            if (first + 1 < c.last || first > c.last + 1) continue;
            if (s == nullptr || c.window > s->window || (c.window == s->window && c.run > s->run)) s = &c;
        }
        if (blocks <= options_.whole_object_blocks || (dataset_fits(object) && o.size <= prefetch_budget_)) {
            // Queue the object in order (this read's own blocks are in flight
            // and skipped) as far as the budget allows; later reads go on.
            for (; os.whole_next < blocks; ++os.whole_next) {
                BlockKey key{object, os.whole_next};
                if (!start_prefetch_locked(key, block_length(o, key), os)) break;
            }
        }
        if (s == nullptr) {
            // A new stream, in a free slot or the least recently used one's.
            // It has no window: a random read of a large object starts no prefetch.
            Stream& slot = os.count < kStreams
                               ? os.streams[os.count++]
                               : *std::min_element(os.streams.begin(), os.streams.end(),
                                                   [](const Stream& a, const Stream& b) { return a.used < b.used; });
            slot = Stream{last, last + 1, os.clock, 0, 0};
            return;
        }
        bool advanced = last > s->last;
        s->last = std::max(s->last, last);
        s->used = os.clock;
        ++s->run;
        if (s->window == 0) {
            if (s->run >= kSequentialRuns) s->window = std::min(kInitialWindow, options_.prefetch_blocks);
        } else if (advanced) {
            s->window = std::min(s->window * 2, options_.prefetch_blocks);
        }
        if (s->window == 0) return;
        std::uint64_t b = std::max(s->next, s->last + 1);
        std::uint64_t end = std::min(s->last + 1 + s->window, blocks);
        for (; b < end && os.inflight < s->window; ++b) {
            BlockKey key{object, b};
            if (!start_prefetch_locked(key, block_length(o, key), os)) break;
        }
        s->next = b;
    } catch (...) {
        // Prefetch is an optimisation: without memory for it, reads go on without it.
    }
}

bool Fetcher::start_prefetch_locked(const BlockKey& key, std::uint64_t bytes, ObjectStreams& os) {
    if (auto it = unread_.find(key); it != unread_.end()) {
        if (!evicted_unread_locked(key, it->second)) return true;  // prefetched already, in flight or cached
        unread_bytes_ -= it->second.bytes;  // evicted before anyone read it: may come again
        unread_.erase(it);
    }
    if (queue_.size() >= kMaxQueued) return false;
    // A block that needs no prefetch costs no budget, so a whole-object
    // prefetch walks past the cached part of an object even when the budget
    // is spent. (One that lands after this check is caught at registration.)
    {
        std::lock_guard lock(inflight_mutex_);
        if (inflight_.count(key) != 0 || cache_.contains(key)) return true;
    }
    if (unread_bytes_ + bytes > prefetch_budget_) {
        // Unread blocks only expire when the cache evicts them: scan for
        // them only after evictions, not at every read while the budget is
        // spent (with a dataset that fits the cache, nothing is evicted).
        std::uint64_t evictions = cache_.stats().evictions;
        if (evictions != pruned_at_evictions_) {
            pruned_at_evictions_ = evictions;
            prune_unread_locked();
        }
        if (unread_bytes_ + bytes > prefetch_budget_) return false;
    }
    // A worker to run it: one more while the queue outgrows the idle ones
    // (started before we know the block is needed; at worst it stays idle).
    unsigned most = std::max(options_.prefetch_threads, 1u);
    if (queue_.size() + 1 > idle_workers_ && workers_.size() < most) {
        try {
            workers_.emplace_back([this](std::stop_token stop) { prefetch_worker(stop); });
        } catch (...) {
            if (workers_.empty()) return false;  // nobody would ever run it
        }
    }
    auto entry = unread_.try_emplace(key).first;
    {
        std::lock_guard lock(inflight_mutex_);
        // Checked under the lock, like acquire(): a leader inserts into the
        // cache before it leaves inflight_, so one of the two sees the block.
        bool busy = inflight_.count(key) != 0 || cache_.contains(key);
        if (!busy) {
            try {
                auto promise = std::make_unique<std::promise<Result<BlockPtr>>>();
                SharedBlock result = promise->get_future().share();
                inflight_.emplace(key, Inflight{std::move(promise), std::move(result), true});
            } catch (...) {
                busy = true;  // not registered; treat as not needed
            }
        }
        if (busy) {
            unread_.erase(entry);
            return true;
        }
    }
    try {
        queue_.push_back(key);
    } catch (...) {
        unread_.erase(entry);
        publish(key, make_error(Errc::Internal, "prefetch: cannot queue (F08)"));
        return false;
    }
    entry->second.bytes = bytes;
    unread_bytes_ += bytes;
    ++os.inflight;
    ++pending_;
    prefetched_.fetch_add(1, std::memory_order_relaxed);
    queue_cv_.notify_one();
    return true;
}

void Fetcher::consume_locked(const BlockKey& key) {
    auto it = unread_.find(key);
    if (it == unread_.end()) return;
    Unread& u = it->second;
    if (!u.done) {
        u.wanted = true;  // counted when it lands
        return;
    }
    if (!u.block.expired()) prefetch_hits_.fetch_add(1, std::memory_order_relaxed);
    unread_bytes_ -= u.bytes;
    unread_.erase(it);
}

bool Fetcher::evicted_unread_locked(const BlockKey& key, const Unread& u) const {
    // Out of the cache even while a joiner still holds the block: it no
    // longer takes cache memory, and nothing keeps it from coming back.
    return u.done && (u.block.expired() || !cache_.contains(key));
}

void Fetcher::prune_unread_locked() {
    // Blocks the cache evicted before anyone read them no longer hold budget.
    for (auto it = unread_.begin(); it != unread_.end();) {
        if (evicted_unread_locked(it->first, it->second)) {
            unread_bytes_ -= it->second.bytes;
            it = unread_.erase(it);
        } else {
            ++it;
        }
    }
}

// A read that joined a prefetch still waiting in the queue (a whole shard
// is queued in order; a shuffled reader wants block 50 now) moves it up, so
// it waits for the next free worker, not for the blocks before it. Promoted
// blocks stay in the order they were asked for, ahead of the rest: each goes
// behind the ones promoted before it, so none is overtaken for ever.
void Fetcher::promote_queued(const std::vector<Slot>& slots) noexcept {
    bool any = false;
    for (const Slot& s : slots) any = any || s.joined_prefetch;
    if (!any) return;
    std::lock_guard lock(prefetch_mutex_);
    for (const Slot& s : slots) {
        if (!s.joined_prefetch) continue;
        auto front = queue_.begin() + static_cast<std::ptrdiff_t>(promoted_front_);
        auto it = std::find(front, queue_.end(), s.key);
        if (it == queue_.end()) continue;  // running already, or promoted
        std::rotate(front, it, it + 1);
        ++promoted_front_;
        promoted_.fetch_add(1, std::memory_order_relaxed);
    }
}

void Fetcher::prefetch_worker(std::stop_token stop) {
    std::unique_lock lock(prefetch_mutex_);
    for (;;) {
        ++idle_workers_;
        bool has_work = queue_cv_.wait(lock, stop, [&] { return !queue_.empty(); });
        --idle_workers_;
        if (!has_work || stop.stop_requested()) return;
        BlockKey key = queue_.front();
        queue_.pop_front();
        if (promoted_front_ > 0) --promoted_front_;
        lock.unlock();
        run_prefetch(key, stop);
        lock.lock();
    }
}

void Fetcher::run_prefetch(const BlockKey& key, std::stop_token stop) {
    Result<BlockPtr> result = make_error(Errc::Internal, "prefetch: failed (F06)");
    bool cached = false;
    try {
        const ObjectSpec& o = object(key.object);
        if (BlockPtr block = load_from_disk(o, key)) result = std::move(block);
        else result = verify_or_refetch(key, reader_.read_range(o.location, block_offset(o, key), block_length(o, key)),
                                        Origin::Prefetch, stop);
        if (result) {
            cache_.insert(key, *result);
            cached = cache_.contains(key);
        }
    } catch (const std::exception& e) {
        // A failed insert leaves `result` good: joiners still get the bytes.
        if (!result) result = make_error(Errc::Internal, std::string("prefetch: ") + e.what() + " (F06)");
    } catch (...) {
        // `result` stays an error (or good, if only the insert failed).
    }
    {
        std::lock_guard lock(prefetch_mutex_);
        if (auto os = streams_.find(key.object); os != streams_.end()) --os->second.inflight;
        if (!result) prefetch_failures_.fetch_add(1, std::memory_order_relaxed);
        if (auto it = unread_.find(key); it != unread_.end()) {
            // A block that is not in the cache (not stored, or evicted at
            // once) holds no budget: prunes only follow evictions.
            if (!result || !cached || it->second.wanted) {
                if (result && it->second.wanted) prefetch_hits_.fetch_add(1, std::memory_order_relaxed);
                unread_bytes_ -= it->second.bytes;
                unread_.erase(it);
            } else {
                it->second.done = true;
                it->second.block = *result;
                if (dataset_fits(key.object)) {
                    unread_bytes_ -= it->second.bytes;  // kept, for prefetch_hits, at no cost
                    it->second.bytes = 0;
                }
            }
        }
    }
    publish(key, result);
    std::lock_guard lock(prefetch_mutex_);
    if (--pending_ == 0) idle_cv_.notify_all();
}

void Fetcher::wait_prefetch_idle() {
    std::unique_lock lock(prefetch_mutex_);
    idle_cv_.wait(lock, [&] { return pending_ == 0; });
}

std::string Fetcher::audit() {
    std::lock_guard prefetch(prefetch_mutex_);
    std::lock_guard inflight(inflight_mutex_);
    std::string problems;
    auto note = [&](const std::string& what) { problems += (problems.empty() ? "" : "; ") + what; };
    if (!queue_.empty()) note(std::to_string(queue_.size()) + " queued");
    if (promoted_front_ > queue_.size()) note("promoted_front past the queue");
    if (pending_ != 0) note(std::to_string(pending_) + " pending");
    if (!inflight_.empty()) note(std::to_string(inflight_.size()) + " in flight");
    std::uint64_t sum = 0;
    for (const auto& [key, u] : unread_) {
        sum += u.bytes;
        if (!u.done) note("an unread block not done");
    }
    if (sum != unread_bytes_) note("unread bytes " + std::to_string(unread_bytes_) + " != " + std::to_string(sum));
    if (unread_bytes_ > prefetch_budget_) note("unread bytes over the budget");
    for (const auto& [object, os] : streams_)
        if (os.inflight != 0) note("object " + std::to_string(object) + " has prefetches in flight");
    return problems;
}

Result<std::size_t> Fetcher::read(std::uint32_t object, std::uint64_t offset, char* buffer, std::size_t size) {
    auto slices = read_slices(object, offset, size);
    if (!slices) return std::move(slices).error();
    return copy_slices(*slices, buffer);
}

Result<ReadSlices> Fetcher::read_slices(std::uint32_t object, std::uint64_t offset, std::size_t size) {
    const ObjectSpec* spec = find(object);
    if (spec == nullptr) return make_error(Errc::Internal, "fetch: unknown object (F03)");
    const ObjectSpec& o = *spec;
    if (offset >= o.size || size == 0) return ReadSlices{};
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
                if (s.lead != nullptr) fetcher.publish(s.key, make_error(Errc::Internal, "fetch: read aborted (F05)"));
        }
    } guard{*this, slots};
    for (std::uint64_t i = first; i <= last; ++i) slots.push_back(acquire(BlockKey{object, i}));
    promote_queued(slots);
    // Our own requests are on their way; queue what comes after them.
    if (options_.prefetch_blocks > 0) prefetch_after(object, o, first, last);
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
    return slice_blocks(o, blocks, offset, length);
}

ReadSlices Fetcher::slice_blocks(const ObjectSpec& o, std::vector<BlockPtr>& blocks, std::uint64_t offset,
                                 std::size_t length) {
    std::uint64_t first = offset / o.block_size;
    ReadSlices out;
    out.reserve(blocks.size());
    std::size_t taken = 0;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        std::uint64_t block_start = (first + i) * o.block_size;
        std::uint64_t from = std::max(offset, block_start) - block_start;
        std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(blocks[i]->size() - from, length - taken));
        const char* data = blocks[i]->data() + from;
        out.push_back(ReadSlice{std::move(blocks[i]), data, n});
        taken += n;
    }
    return out;
}

std::optional<ReadSlices> Fetcher::cached_slices(std::uint32_t object, std::uint64_t offset, std::size_t size) {
    const ObjectSpec* spec = find(object);
    if (spec == nullptr || offset >= spec->size || size == 0 || spec->block_size == 0) return std::nullopt;
    const ObjectSpec& o = *spec;
    std::size_t length = static_cast<std::size_t>(std::min<std::uint64_t>(size, o.size - offset));
    std::uint64_t first = offset / o.block_size;
    std::uint64_t last = (offset + length - 1) / o.block_size;
    for (std::uint64_t i = first; i <= last; ++i)  // count no hit unless all are there
        if (!cache_.contains(BlockKey{object, i})) return std::nullopt;
    std::vector<BlockPtr> blocks;
    blocks.reserve(static_cast<std::size_t>(last - first + 1));
    for (std::uint64_t i = first; i <= last; ++i) {
        BlockPtr b = cache_.get_if_cached(BlockKey{object, i});
        if (!b || b->size() != block_length(o, BlockKey{object, i})) return std::nullopt;
        blocks.push_back(std::move(b));
    }
    // The caller hands the bytes on to a reader: for prefetch, a read.
    if (options_.prefetch_blocks > 0) prefetch_after(object, o, first, last);
    return slice_blocks(o, blocks, offset, length);
}

Fetcher::Stats Fetcher::stats() const {
    return Stats{fetches_.load(),    joined_.load(),        integrity_failures_.load(),
                 bytes_fetched_.load(), prefetched_.load(), prefetch_hits_.load(),
                 prefetch_failures_.load(), promoted_.load()};
}

}  // namespace shelbyfs
