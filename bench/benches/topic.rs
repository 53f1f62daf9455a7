//! Criterion benchmarks of the topic trie: matching a topic against 10k filters with
//! exact, `+` and `#` entries (`cargo bench -p ferromq-bench --bench topic`).

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use ferromq_topic::TopicTrie;

fn bench(c: &mut Criterion) {
    let mut trie: TopicTrie<u32, u32> = TopicTrie::new();
    let mut key = 0u32;
    for site in 0..100 {
        for dev in 0..100 {
            trie.insert(&format!("site/{site}/dev/{dev}/temp"), key, key);
            key += 1;
        }
        trie.insert(&format!("site/{site}/dev/+/temp"), key, key);
        key += 1;
        trie.insert(&format!("site/{site}/#"), key, key);
        key += 1;
    }
    trie.insert("#", key, key);
    let mut g = c.benchmark_group("trie");
    g.bench_function("match_10k_filters", |b| {
        b.iter(|| {
            let mut n = 0u32;
            trie.for_each_match(black_box("site/42/dev/17/temp"), |_, v| n += *v & 1);
            n
        })
    });
    g.bench_function("match_miss", |b| {
        b.iter(|| {
            let mut n = 0u32;
            trie.for_each_match(black_box("other/42/dev/17/temp"), |_, v| n += *v & 1);
            n
        })
    });
    let mut one: TopicTrie<u32, u32> = TopicTrie::new();
    one.insert("bench/0", 0, 0);
    g.bench_function("match_single_filter", |b| {
        b.iter(|| {
            let mut n = 0u32;
            one.for_each_match(black_box("bench/0"), |_, v| n += *v + 1);
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
