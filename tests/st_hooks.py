"""Schemathesis hooks for tests/test_api_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

positive_data_acceptance fails a schema-valid request that is refused. Every rule the API applies that
OpenAPI can state is in its schema; the rules left compare a value with another field of the same body
or with what is stored (K below N, ks within K, k within the stored K, a umap study's size, a sweep's
number of points, an Idempotency-Key already used for another body, an uploaded embedding's .npy body
with one row per stored sample, its name against the study's models; your data: a path or a named data set,
not both, an upload's .npz of whole bytes and labels, a stored upload named, and studied on its training
split alone; a new image that is one, or
a sample of the data's shape, and k below N). RELIABILITY.md (items 11 and 21)
asks 422 for those, naming the field. This check is
positive_data_acceptance with exactly those refusals allowed: any other refusal of valid data fails."""

from __future__ import annotations

import re

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

UNSTATABLE = re.compile(
    r"the table's K"                                   # k beyond the experiment's stored K
    r"|must be below the number of samples"            # K >= N: k against limit
    r"|must each be in 1\.\.K="                         # ks against K
    r"|needs at least \d+ samples, got N="              # umap against limit
    r"|points, more than the \d+ a sweep may have"     # the product of the grid's lengths
    r"|^grid point \{"                                 # a grid point against the base (one of the above)
    r"|was used for another (study|sweep)"             # an Idempotency-Key reused with another body
    # an uploaded embedding's body: a .npy (or .npz) of N x m finite numbers, N the experiment's samples
    r"|^the body (is not a \.npy or \.npz file|is not a readable \.npy or \.npz file|is empty: expected a \.npy"
    r"|is an \.npz without an array named 'codes')"
    r"|^the codes (hold .* values; expected real numbers|have shape .*; expected N x m|have \d+ rows; the "
    r"experiment has \d+ samples|have m = 0 columns|hold \d+ NaN or infinite values)"
    r"|is the name of a study model or of the pixel space"  # an upload's name against the stored spaces
    # your data: a named data set or a path, not both; labels only with a path; an upload that is stored
    r"|give either a named data set or your data \(data\), not both|^labels: only with data"
    r"|^split: an uploaded data set has no test split"  # split against the data set
    r"|^dataset: no uploaded data set|^limit: [a-z-]+ has \d+ training samples, got"  # limit against its data set
    # an uploaded data set's body: an .npz of X (whole numbers in 0..255) and y, and its name not a named set's
    r"|^the body: (not a \.npy or \.npz file|empty; expected|not a readable \.np[yz] file|no labels|an array of "
    r"shape|values of type|value .* at index|arrays .*; expected the data as 'X'|labels (of|from) |\d+ values per "
    r"sample)"
    r"|is a named data set of aeknn's"
    # new images (POST /experiments/{id}/encode): a body that is an image, or samples of the data's shape
    r"|^(the image|images\[\d+\]|arrays|the \.npy): "
    r"|^the body: (not JSON|expected \{|images and arrays are lists|no samples|\d+ samples; at most)"
    r"|^Content-Type .*: expected image/png"
    r"|^k: \d+; expected 1\.\.\d+ \(the experiment has \d+ samples\)")  # k against N


@schemathesis.check
def positive_data_acceptance_but_cross_field_rules(ctx, response, case):
    if response.status_code == 422:
        try:
            message = response.json().get("message", "")
        except ValueError:
            message = ""
        if UNSTATABLE.search(message.removeprefix("body: ").removeprefix("base: ")):
            return None
    return positive_data_acceptance(ctx, response, case)
