use burn::tensor::{Tensor, Distribution};
use burnish::backend::CpuTrain;
use std::time::Instant;

fn time<F: FnMut() -> T, T>(label: &str, mut f: F) {
    let _ = f();
    let t = Instant::now();
    let n = 5;
    for _ in 0..n { let _ = f(); }
    println!("{label}: {:.2} ms", t.elapsed().as_secs_f64() / n as f64 * 1e3);
}

#[test]
#[ignore]
fn pieces() {
    let d = Default::default();
    let p = Tensor::<CpuTrain, 2>::random([512, 4864], Distribution::Normal(0.0, 1.0), &d).require_grad();
    let q = Tensor::<CpuTrain, 2>::random([512, 4864], Distribution::Normal(0.0, 1.0), &d).require_grad();
    time("AD add tracked", || (p.clone() + q.clone()).into_primitive());
    let p2 = Tensor::<CpuTrain, 2>::random([512, 4864], Distribution::Normal(0.0, 1.0), &d);
    let q2 = Tensor::<CpuTrain, 2>::random([512, 4864], Distribution::Normal(0.0, 1.0), &d);
    time("AD add untracked", || (p2.clone() + q2.clone()).into_primitive());
    time("AD mul scalar tracked", || (p.clone() * 2.0).into_primitive());
    let x = Tensor::<CpuTrain, 2>::random([512, 896], Distribution::Normal(0.0, 1.0), &d).require_grad();
    let w = Tensor::<CpuTrain, 2>::random([4864, 896], Distribution::Normal(0.0, 1.0), &d);
    time("AD y = xW^T", || x.clone().matmul(w.clone().transpose()).into_primitive());
    time("AD y = xW^T, y + q", || (x.clone().matmul(w.clone().transpose()) + q.clone()).into_primitive());
    time("AD y = xW^T, y + q2", || (x.clone().matmul(w.clone().transpose()) + q2.clone()).into_primitive());
}
