//! The S3 store with credentials and region from the standard chain (the
//! environment), against SeaweedFS. A binary of its own with a single
//! test, because it changes this process's environment.

use tidegate::store::s3::S3Store;
use tidegate::store::{ObjectStore, PosixMeta, StoreError};
use tidegate_tests::s3::Seaweed;

#[test]
fn credentials_and_region_from_the_environment() {
    let sw = Seaweed::start(&["env-chain"]);
    let home = tempfile::tempdir().unwrap();
    // Set before any SDK code runs in this process; no other test shares it.
    for (k, v) in sw.client_env() {
        std::env::set_var(k, v);
    }
    // No profile files of the machine's user.
    std::env::set_var("AWS_CONFIG_FILE", home.path().join("config"));
    std::env::set_var(
        "AWS_SHARED_CREDENTIALS_FILE",
        home.path().join("credentials"),
    );

    let mut config = sw.store_config("env-chain", "");
    config.credentials = None;
    config.region = None;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = S3Store::new(config.clone()).await.unwrap();
        assert_eq!(s.region(), tidegate_tests::s3::REGION);
        s.put_object("k", b"from env".to_vec(), &PosixMeta::default())
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let n = s.get_range("k", 0, &mut buf, None).await.unwrap();
        assert_eq!(&buf[..n], b"from env");

        // Region: the environment's, else the fallback (SeaweedFS takes any).
        std::env::set_var("AWS_REGION", "eu-west-3");
        let s = S3Store::new(config.clone()).await.unwrap();
        assert_eq!(s.region(), "eu-west-3");
        assert_eq!(s.head("k").await.unwrap().size, 8);
        std::env::remove_var("AWS_REGION");
        std::env::remove_var("AWS_DEFAULT_REGION");
        let s = S3Store::new(config.clone()).await.unwrap();
        assert_eq!(s.region(), "us-east-1");
        assert_eq!(s.head("k").await.unwrap().size, 8);

        // Wrong keys in the environment are refused by the server.
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "not-the-secret");
        let s = S3Store::new(config).await.unwrap();
        assert!(matches!(s.head("k").await, Err(StoreError::Denied { .. })));
    });
}
