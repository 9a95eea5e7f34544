// Hashed word n-gram index (see ngram_index.h) and the `dsm_engine._C` module definition.
#include "ngram_index.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace py = pybind11;

namespace dsm {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kMulA = 0xff51afd7ed558ccdULL;
constexpr uint64_t kMulB = 0xc4ceb9fe1a85ec53ULL;
constexpr size_t kCodePoints = 0x110000;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// Murmur3's 64-bit finaliser: every input bit affects every output bit.
inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= kMulA;
    x ^= x >> 33;
    x *= kMulB;
    x ^= x >> 33;
    return x;
}

uint64_t hash_bytes(const char* p, size_t n) {
    uint64_t h = 0x243F6A8885A308D3ULL ^ (static_cast<uint64_t>(n) * kGolden);
    while (n >= 8) {
        uint64_t v;
        std::memcpy(&v, p, 8);
        h = rotl(h ^ mix64(v), 29) * kGolden;
        p += 8;
        n -= 8;
    }
    if (n > 0) {
        uint64_t v = 0;
        std::memcpy(&v, p, n);
        h = rotl(h ^ mix64(v ^ (static_cast<uint64_t>(n) << 56)), 29) * kGolden;
    }
    return mix64(h);
}

// Word hashes fold left to right; the length enters only at the end, so one pass over the
// next n words yields the keys of every length starting at a position.
inline uint64_t fold(uint64_t h, uint64_t word_hash) { return (rotl(h, 31) ^ word_hash) * kMulB; }

inline uint64_t finish(uint64_t h, int length) {
    uint64_t k = mix64(h ^ (static_cast<uint64_t>(length) * kGolden));
    return k == 0 ? 1 : k;  // 0 marks an empty table slot
}

// Decodes one UTF-8 code point at text[i]; advances i. Python's encoder (with
// "surrogatepass") only hands us well-formed sequences, but a stray byte must not crash us:
// it decodes as U+FFFD, a separator.
inline uint32_t decode_utf8(const std::string& text, size_t& i) {
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    const size_t n = text.size();
    unsigned char c = s[i];
    if (c < 0x80) {
        ++i;
        return c;
    }
    int len = (c >= 0xF0) ? 4 : (c >= 0xE0) ? 3 : (c >= 0xC0) ? 2 : 0;
    if (len == 0 || i + len > n) {
        ++i;
        return 0xFFFD;
    }
    uint32_t cp = c & (0x7F >> len);
    for (int k = 1; k < len; ++k) {
        unsigned char cc = s[i + k];
        if ((cc & 0xC0) != 0x80) {
            ++i;
            return 0xFFFD;
        }
        cp = (cp << 6) | (cc & 0x3F);
    }
    i += len;
    return cp < kCodePoints ? cp : 0xFFFD;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
HashedNGramTable::HashedNGramTable() : keys_(1024, 0), masks_(1024, 0) { rebuild_filter(); }

bool HashedNGramTable::insert(uint64_t key, uint32_t mask) {
    if ((size_ + 1) * 2 > keys_.size()) grow();
    const size_t cap_mask = keys_.size() - 1;
    size_t i = key & cap_mask;
    while (keys_[i] != 0) {
        if (keys_[i] == key) {
            masks_[i] |= mask;
            return false;
        }
        i = (i + 1) & cap_mask;
    }
    keys_[i] = key;
    masks_[i] = mask;
    ++size_;
    const uint64_t bit = key >> (64 - filter_bits_log2_);
    filter_[bit >> 6] |= 1ULL << (bit & 63);
    return true;
}

uint32_t HashedNGramTable::find(uint64_t key) const {
    const uint64_t bit = key >> (64 - filter_bits_log2_);
    if (!((filter_[bit >> 6] >> (bit & 63)) & 1)) return 0;
    const size_t cap_mask = keys_.size() - 1;
    size_t i = key & cap_mask;
    while (keys_[i] != 0) {
        if (keys_[i] == key) return masks_[i];
        i = (i + 1) & cap_mask;
    }
    return 0;
}

void HashedNGramTable::grow() {
    std::vector<uint64_t> old_keys(keys_.size() * 2, 0);
    std::vector<uint32_t> old_masks(masks_.size() * 2, 0);
    old_keys.swap(keys_);
    old_masks.swap(masks_);
    const size_t cap_mask = keys_.size() - 1;
    for (size_t j = 0; j < old_keys.size(); ++j) {
        if (old_keys[j] == 0) continue;
        size_t i = old_keys[j] & cap_mask;
        while (keys_[i] != 0) i = (i + 1) & cap_mask;
        keys_[i] = old_keys[j];
        masks_[i] = old_masks[j];
    }
    rebuild_filter();
}

void HashedNGramTable::rebuild_filter() {
    // ~8 filter bits per slot (16-32 per key): most misses cost one cache-friendly probe.
    int log2 = 6;
    while ((size_t{1} << log2) < keys_.size() * 8) ++log2;
    filter_bits_log2_ = log2;
    filter_.assign((size_t{1} << log2) / 64, 0);
    for (uint64_t k : keys_) {
        if (k == 0) continue;
        const uint64_t bit = k >> (64 - filter_bits_log2_);
        filter_[bit >> 6] |= 1ULL << (bit & 63);
    }
}

// ---------------------------------------------------------------------------------------------
NGramIndex::NGramIndex(const std::string& char_classes, int n, int min_short)
    : classes_(char_classes.begin(), char_classes.end()), n_(n), min_short_(min_short) {
    if (classes_.size() != kCodePoints)
        throw std::invalid_argument("char_classes must hold one byte per code point (0x110000)");
    if (n < 1 || n >= 64) throw std::invalid_argument("n must be in [1, 63]");
    if (min_short < 1 || min_short > n)
        throw std::invalid_argument("min_short must be in [1, n]");
}

void NGramIndex::split_words(const std::string& text, std::vector<Word>& out) const {
    out.clear();
    int32_t segment = 0;
    size_t i = 0;
    bool in_word = false;
    size_t word_begin = 0;
    const size_t size = text.size();
    while (i < size) {
        const size_t at = i;
        const uint32_t cp = decode_utf8(text, i);
        const uint8_t cls = classes_[cp];
        if (cls == 1) {
            if (!in_word) {
                in_word = true;
                word_begin = at;
            }
            continue;
        }
        if (in_word) {
            out.push_back({static_cast<uint32_t>(word_begin), static_cast<uint32_t>(at), segment,
                           hash_bytes(text.data() + word_begin, at - word_begin)});
            in_word = false;
        }
        if (cls == 2) {
            out.push_back({static_cast<uint32_t>(at), static_cast<uint32_t>(i), segment,
                           hash_bytes(text.data() + at, i - at)});
        } else if (cp == '\n') {
            ++segment;
        }
    }
    if (in_word)
        out.push_back({static_cast<uint32_t>(word_begin), static_cast<uint32_t>(size), segment,
                       hash_bytes(text.data() + word_begin, size - word_begin)});
}

int NGramIndex::add(const std::string& normalized, int benchmark_id) {
    if (benchmark_id < 0 || benchmark_id >= 32)
        throw std::invalid_argument("benchmark_id must be in [0, 31]");
    if (normalized.size() >= (size_t{1} << 32))
        throw std::invalid_argument("benchmark text too long (>= 4 GiB)");
    std::vector<Word> words;
    split_words(normalized, words);
    const int count = static_cast<int>(words.size());
    const uint32_t mask = 1u << benchmark_id;
    if (count >= n_) {
        for (int p = 0; p + n_ <= count; ++p) {
            uint64_t h = 0;
            for (int k = 0; k < n_; ++k) h = fold(h, words[p + k].hash);
            long_.insert(finish(h, n_), mask);
        }
        has_length_[n_] = true;
    } else if (count >= min_short_) {
        uint64_t h = 0;
        for (const Word& w : words) h = fold(h, w.hash);
        short_.insert(finish(h, count), mask);
        const uint64_t first = words[0].hash & 4095;
        short_first_[first >> 6] |= 1ULL << (first & 63);
        has_length_[count] = true;
    }
    return count;
}

std::vector<int> NGramIndex::lengths() const {
    std::vector<int> out;
    for (int l = n_; l >= 1; --l)
        if (has_length_[l]) out.push_back(l);
    return out;
}

void NGramIndex::query_one(const std::string& text, std::vector<Word>& words,
                           std::vector<SegmentMatch>& out) const {
    out.clear();
    split_words(text, words);
    const int count = static_cast<int>(words.size());
    if (count == 0) return;
    const int num_segments = words.back().segment + 1;
    // best[s]: index of the match assigned to segment s, -1 while none
    std::vector<int32_t> best;
    struct Hit {
        int p, len;
        uint32_t mask;
    };
    std::vector<Hit> hits;
    // Keys of all n-grams first, so the filter reads can be prefetched ahead of the scan.
    std::vector<uint64_t> long_keys;
    if (has_length_[n_] && count >= n_) {
        long_keys.resize(count - n_ + 1);
        for (int p = 0; p + n_ <= count; ++p) {
            uint64_t h = 0;
            for (int k = 0; k < n_; ++k) h = fold(h, words[p + k].hash);
            long_keys[p] = finish(h, n_);
        }
    }
    constexpr int kPrefetch = 16;
    const int num_long = static_cast<int>(long_keys.size());
    for (int p = 0; p < std::min(kPrefetch, num_long); ++p) long_.prefetch(long_keys[p]);
    uint64_t keys[64];
    for (int p = 0; p < count; ++p) {
        const int max_len = std::min(n_, count - p);
        if (max_len < min_short_) break;
        if (p + kPrefetch < num_long) long_.prefetch(long_keys[p + kPrefetch]);
        int len = 0;
        uint32_t mask = 0;
        // Longest first: a shorter match at the same start covers a subset of the segments.
        if (p < num_long && (mask = long_.find(long_keys[p])) != 0) {
            len = n_;
        } else if (short_.size() > 0 &&
                   ((short_first_[(words[p].hash & 4095) >> 6] >> (words[p].hash & 63)) & 1)) {
            const int top = std::min(n_ - 1, max_len);
            uint64_t h = 0;
            for (int k = 0; k < top; ++k) {
                h = fold(h, words[p + k].hash);
                if (has_length_[k + 1]) keys[k + 1] = finish(h, k + 1);
            }
            for (int l = top; l >= min_short_; --l) {
                if (!has_length_[l]) continue;
                if ((mask = short_.find(keys[l])) != 0) {
                    len = l;
                    break;
                }
            }
        }
        if (len == 0) continue;
        if (best.empty()) best.assign(num_segments, -1);
        const int hit = static_cast<int>(hits.size());
        hits.push_back({p, len, mask});
        for (int s = words[p].segment; s <= words[p + len - 1].segment; ++s)
            if (best[s] < 0) best[s] = hit;
    }
    if (hits.empty()) return;
    std::vector<std::string> texts(hits.size());
    for (int s = 0; s < num_segments; ++s) {
        const int hit = best[s];
        if (hit < 0) continue;
        std::string& ngram = texts[hit];
        if (ngram.empty()) {
            const Hit& m = hits[hit];
            for (int k = 0; k < m.len; ++k) {
                const Word& w = words[m.p + k];
                if (k) ngram.push_back(' ');
                ngram.append(text, w.begin, w.end - w.begin);
            }
        }
        out.push_back({s, ngram, hits[hit].mask});
    }
}

std::vector<std::vector<SegmentMatch>> NGramIndex::query(
    const std::vector<std::string>& docs) const {
    std::vector<std::vector<SegmentMatch>> out(docs.size());
    std::vector<Word> words;
    for (size_t d = 0; d < docs.size(); ++d) {
        if (docs[d].size() >= (size_t{1} << 32))
            throw std::invalid_argument("document too long (>= 4 GiB)");
        query_one(docs[d], words, out[d]);
    }
    return out;
}

}  // namespace dsm

// ---------------------------------------------------------------------------------------------
PYBIND11_MODULE(_C, m) {
    m.doc() = "dsm-engine C++ extensions";

    py::class_<dsm::NGramIndex>(m, "NGramIndex",
                                "Hashed word n-gram index over normalised UTF-8 text "
                                "(see dsm_engine.data_pipeline.ngram_index).")
        .def(py::init<const std::string&, int, int>(), py::arg("char_classes"), py::arg("n") = 10,
             py::arg("min_short") = 3)
        .def("add", &dsm::NGramIndex::add, py::arg("normalized"), py::arg("benchmark_id"),
             "Index one normalised UTF-8 text; returns its word count.")
        .def(
            "add_many",
            [](dsm::NGramIndex& self, const std::vector<std::string>& texts,
               const std::vector<int>& ids) {
                if (texts.size() != ids.size())
                    throw std::invalid_argument("texts and benchmark ids differ in length");
                py::gil_scoped_release release;
                for (size_t i = 0; i < texts.size(); ++i) self.add(texts[i], ids[i]);
            },
            py::arg("texts"), py::arg("benchmark_ids"))
        .def(
            "query",
            [](const dsm::NGramIndex& self, const std::vector<std::string>& docs) {
                std::vector<std::vector<dsm::SegmentMatch>> result;
                {
                    py::gil_scoped_release release;
                    result = self.query(docs);
                }
                py::list out(result.size());
                for (size_t d = 0; d < result.size(); ++d) {
                    py::list doc(result[d].size());
                    for (size_t j = 0; j < result[d].size(); ++j) {
                        const auto& s = result[d][j];
                        doc[j] = py::make_tuple(s.segment, py::str(s.ngram), s.benchmarks);
                    }
                    out[d] = std::move(doc);
                }
                return out;
            },
            py::arg("docs"),
            "For each normalised UTF-8 document: [(segment, ngram, benchmark_mask), ...].")
        .def_property_readonly("num_keys", &dsm::NGramIndex::num_keys)
        .def_property_readonly("n", &dsm::NGramIndex::n)
        .def_property_readonly("min_short", &dsm::NGramIndex::min_short)
        .def_property_readonly("lengths", &dsm::NGramIndex::lengths);
}
