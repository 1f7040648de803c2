"""bench.load's server-side latency quantile from a Prometheus histogram delta."""

from bench.load import histogram_quantile


def test_quantile_interpolates_within_the_bucket_that_holds_it():
    # 100 observations: 50 under 0.1 s, 40 in (0.1, 0.15], 10 in (0.15, 0.2]
    delta = {"le:0.1": 50.0, "le:0.15": 90.0, "le:0.2": 100.0, "le:+Inf": 100.0, "deeplab_images_total": 7.0}
    assert abs(histogram_quantile(delta, 0.5) - 0.1) < 1e-9
    assert abs(histogram_quantile(delta, 0.7) - 0.125) < 1e-9
    assert abs(histogram_quantile(delta, 0.99) - 0.195) < 1e-9


def test_quantile_of_nothing_and_of_the_open_bucket():
    assert histogram_quantile({"le:0.1": 0.0, "le:+Inf": 0.0}, 0.99) is None
    assert histogram_quantile({"le:0.1": 1.0, "le:+Inf": 2.0}, 0.99) == 0.1


def test_quantile_of_another_histogram_by_prefix():
    delta = {"le:0.1": 10.0, "le:+Inf": 10.0, "qw:0.01": 90.0, "qw:0.02": 100.0, "qw:+Inf": 100.0}
    assert abs(histogram_quantile(delta, 0.99, "qw:") - 0.019) < 1e-9
    assert abs(histogram_quantile(delta, 0.99) - 0.099) < 1e-9  # the "le:" buckets alone
