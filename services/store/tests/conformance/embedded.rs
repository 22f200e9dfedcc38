//! The conformance suite on the embedded backend: one test per case, each with a fresh store.

macro_rules! embedded_tests {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                crate::cases::$case(quickp2p_store::Store::embedded()).await;
            }
        )*
    };
}

all_cases!(embedded_tests);
