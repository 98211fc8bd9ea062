"""Fréchet distance of classifier features: closed forms and a classifier that learns digits."""
import numpy as np
import torch

from audiosep.data.images import load_images
from audiosep.eval.frechet import accuracy, feature_statistics, fit_classifier, frechet_distance


def test_frechet_distance_of_gaussians_matches_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 5))
    cov = a @ a.T + np.eye(5)
    mu = rng.standard_normal(5)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-8
    # commuting covariances: Σ(√λ₁ − √λ₂)² per eigen-direction, plus the mean term
    d1, d2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    shift = np.array([1.0, -2.0, 0.5])
    expected = np.sum(shift**2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert abs(frechet_distance(np.zeros(3), np.diag(d1), shift, np.diag(d2)) - expected) < 1e-10


def test_classifier_features_tell_digits_from_noise():
    train, test = load_images("digits", "train"), load_images("digits", "test")
    model = fit_classifier(train.images, train.labels, steps=300, batch_size=64)
    assert accuracy(model, test.images, test.labels) > 0.8
    real = feature_statistics(model, test.images)
    same = feature_statistics(model, train.images[:300])
    noise = feature_statistics(model, torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert frechet_distance(*real, *same) < 0.2 * frechet_distance(*real, *noise)
