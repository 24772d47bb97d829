"""HyperGAN 1-D toy regression (Ratzlaff & Fuxin §4.3, Fig. 2).

20 training points x ~ U[−4, 4], y = x³ + ε, ε ~ N(0, 3²); target: one hidden layer of 100 ReLU units;
HyperGAN with a 64-dimensional latent space, 128-unit mixer/generators/discriminator, MSE task loss.
The figure shows the predictive mean ± 3 standard deviations of 10, 100 and 1,000 sampled networks on
[−6, 6] (Fig. 2), next to the same plot for a deep ensemble of directly trained networks (MSE), a deep
ensemble trained for uncertainty (mean–variance outputs on the Gaussian NLL, Lakshminarayanan et al. 2017)
and MC dropout.

    python -m experiments.hypergan_regression --output_dir=runs/hypergan_regression

Writes metrics.json, report.md, regression.png, generator.keras, checkpoints/ and logs/.
"""

from absl import flags

from experiments import common
from experiments import hypergan_common as hc

common.define_flags(dataset="cubic", steps=3000, batch_size=20)
hc.define_flags(target="hypergan_regression", noise_dim=64, code_dim=64, units=128)
flags.DEFINE_string("ensemble_sizes", "10,100,1000", "Numbers of sampled networks in the figure (Fig. 2).")
flags.DEFINE_integer("num_train", 20, "Training points (paper: 20).", lower_bound=1)
flags.DEFINE_float("noise_std", 3.0, "Standard deviation of the observation noise (paper: 3).", lower_bound=0.0)
flags.DEFINE_float("plot_range", 6.0, "The figure spans [−plot_range, plot_range].", lower_bound=0.1)
common.quick_defaults(
    steps=600, pretrain_steps=100, baseline_steps=600, deep_ensemble_size=5, mc_samples=50, ensemble_sizes="10,100"
)
FLAGS = flags.FLAGS


def main(argv):
    ctx = common.setup(argv)
    if FLAGS.dataset != "cubic":
        raise flags.ValidationError(f"hypergan_regression runs on --dataset=cubic only, got {FLAGS.dataset!r}.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from hyperkeras import baselines, data, ensembles, io

    sizes = hc.int_list(FLAGS.ensemble_sizes)
    x, y = data.cubic_regression(n=FLAGS.num_train, noise_std=FLAGS.noise_std, seed=ctx.seed)
    # The paper does not say how inputs and targets are scaled; the networks see x/4 and y/100 so
    # that both are O(1), and everything is reported in the original units.
    xs, ys = 4.0, 100.0
    gen = hc.train_hypernetwork(ctx, x / xs, y / ys, "hypergan", task="regression", load_from=FLAGS.load_from)
    grid = np.linspace(-FLAGS.plot_range, FLAGS.plot_range, 241, dtype=np.float32)[:, None]
    truth = grid[:, 0] ** 3

    curves, rows = {}, []
    for n in sizes:
        pred = ensembles.predict_regression(
            gen, grid / xs, n=n, seed=ctx.seed + 11, batch_size=len(grid), verbose=common.verbose()
        )
        mean, std = pred.mean[:, 0] * ys, pred.std[:, 0] * ys
        curves[f"HyperGAN {n}"] = (mean, std)
    if FLAGS.baselines:
        models = hc.train_baselines(ctx, x / xs, y / ys, task="regression", load_from=FLAGS.load_from)
        pred = ensembles.predict_regression(models["direct"], grid / xs, batch_size=len(grid), verbose=common.verbose())
        curves[f"deep ensemble {len(models['direct'])}"] = (pred.mean[:, 0] * ys, pred.std[:, 0] * ys)
        # Deep ensemble for uncertainty (Lakshminarayanan et al. 2017): mean and variance outputs on the
        # Gaussian NLL, as many networks and steps as the MSE members; its sd includes the learned noise.
        with common.stage("baseline: %d mean–variance networks", len(models["direct"])):
            mv = baselines.mean_variance_ensemble(
                FLAGS.target,
                x / xs,
                y / ys,
                num_models=len(models["direct"]),
                seed=ctx.seed + 3000,
                steps=FLAGS.baseline_steps or ctx.steps,
                batch_size=ctx.batch_size,
                learning_rate=FLAGS.baseline_learning_rate,
                build_kwargs={"input_shape": (1,), "outputs": 2},
            )
        mu, sd = baselines.mean_variance_predict(mv, grid / xs)
        curves[f"deep ensemble {len(mv)} (mean–variance)"] = (mu[:, 0] * ys, sd[:, 0] * ys)
        pred = ensembles.predict_regression(
            ensembles.MCDropout(models["dropout"]),
            grid / xs,
            n=FLAGS.mc_samples,
            batch_size=len(grid),
            verbose=common.verbose(),
        )
        curves["MC dropout"] = (pred.mean[:, 0] * ys, pred.std[:, 0] * ys)

    inside = np.abs(grid[:, 0]) <= 4.0
    for name, (mean, std) in curves.items():
        rows.append(
            {
                "method": name,
                "rmse_in_[-4,4]": float(np.sqrt(np.mean((mean[inside] - truth[inside]) ** 2))),
                "mean_std_in_[-4,4]": float(np.mean(std[inside])),
                "mean_std_outside": float(np.mean(std[~inside])),
                "coverage_3sd_in_[-4,4]": float(np.mean(np.abs(mean[inside] - truth[inside]) <= 3 * std[inside])),
            }
        )
    pred_train = ensembles.predict_regression(gen, x / xs, n=max(sizes), seed=ctx.seed + 11, verbose=common.verbose())
    train_mse = float(np.mean((pred_train.mean * ys - y) ** 2))

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.6), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (name, (mean, std)) in zip(axes, curves.items()):
        ax.fill_between(grid[:, 0], mean - 3 * std, mean + 3 * std, color="lightblue", label="±3 sd")
        ax.plot(grid[:, 0], truth, color="blue", lw=1, label="x³")
        ax.plot(grid[:, 0], mean, color="grey", lw=1.5, label="mean")
        ax.plot(x[:, 0], y[:, 0], "o", mfc="none", mec="red", label="data")
        ax.set_ylim(-250, 250)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("x")
    axes[0].set_ylabel("y (mean ± 3 sd)")
    axes[0].legend(fontsize=7, loc="upper left")
    io.save_figure(fig, ctx.path("regression.png"))
    plt.close(fig)

    out = {"steps": ctx.steps, "train_points": int(len(x)), "hypergan_train_mse": train_mse, "table": rows}
    report = (
        "# HyperGAN 1-D regression (x³ + ε, Fig. 2)\n\n"
        f"{len(x)} training points, {ctx.steps} steps, latent {FLAGS.code_dim}, {FLAGS.generator_units}-unit "
        f"generators; training MSE of the {max(sizes)}-network mean: {train_mse:.2f}.\n\n"
        + common.markdown_table(rows)
        + "\n\n![regression](regression.png)\n"
    )
    common.write_results(ctx, out, report)
    print(report)


if __name__ == "__main__":
    common.run(main)
