//! openraft's storage conformance suite against the sled log store and the state
//! machine (snapshot files included).

#![allow(clippy::unwrap_used)]

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_log_store_passes_openraft_suite() {
    let dir = tempfile::tempdir().unwrap();
    ferromq_cluster::testing::log_store_suite(dir.path().to_path_buf())
        .await
        .unwrap();
}
