"""The active-learning engine: slice scores, query strategies, sparse labels, suggestions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from asdseg.active.annotator_effort import SliceEffort, measure_effort
from asdseg.active.second_opinion import (
    available_second_opinions,
    confidence_labels,
    default_second_opinion,
    sdm_labels,
)
from asdseg.active.slice_scores import SliceScores, agreement_scores, score_slices, slice_entropy
from asdseg.active.sparse_labels import (
    SparseLabels,
    read_slice_effort,
    read_sparse_labels,
    slices_json_path,
    write_sparse_labels,
)
from asdseg.active.stopping import has_converged
from asdseg.active.strategies import select_slices
from asdseg.active.suggest import suggest_slices
from asdseg.active.suggestion_report import (
    format_suggestions,
    read_suggestions,
    suggestion_record,
    write_suggestions,
)
from asdseg.errors import InputError, ModelError
from asdseg.inference.segment import SegmentationResult
from asdseg.io.image_io import array_to_image, image_to_array
from asdseg.io.labels import Label
from asdseg.phantoms import make_phantom, phantom_image
from asdseg.registry import load_network
from asdseg.registry.model_card import ModelCard
from asdseg.training.data import Case, PatchSampler
from asdseg.training.losses import UNLABELLED

from conftest import ROTATED

LABELS = [Label(0, "background", (0, 0, 0)), Label(1, "organ", (200, 0, 0)), Label(2, "other", (0, 0, 200))]


def test_agreement_scores_by_hand() -> None:
    final = np.zeros((6, 6, 4), dtype=np.int64)
    attention = np.zeros_like(final)
    # slice 0: both empty. slice 1: 4 vs 2 voxels, 2 shared -> P-DSC 2*2/(4+2).
    final[0:2, 0:2, 1] = 1
    attention[0:2, 0:1, 1] = 1
    # slice 2: a 1-voxel speck in one head only -> both empty after the min-area rule.
    final[3, 3, 2] = 1
    # slice 3: same 4 voxels, but labelled as different organs -> P-DSC 0, P-accuracy 0.
    final[2:4, 2:4, 3] = 1
    attention[2:4, 2:4, 3] = 2
    p_dsc, p_accuracy, both_empty, disagreement = agreement_scores(
        final, attention, num_classes=3, min_area=2
    )
    np.testing.assert_allclose(p_dsc, [1.0, 4 / 6, 1.0, 0.0])
    # Eq. 4: 2 x agreeing foreground voxels / (SR1 foreground + SR2 foreground)
    np.testing.assert_allclose(p_accuracy, [1.0, 2 * 2 / (4 + 2), 1.0, 0.0])
    assert both_empty.tolist() == [True, False, True, False]
    # voxels labelled differently: 2 in slice 1, the speck is ignored, 4 of another organ in 3
    assert disagreement.tolist() == [0, 2, 0, 4]


def test_empty_slices_next_to_the_organ_ends_stay_candidates() -> None:
    """Both heads see the organ in slices 3-5 only; the organ may go on beyond them."""
    probabilities = np.zeros((2, 8, 8, 10), dtype=np.float32)
    probabilities[0] = 1.0
    organ, background = np.reshape([0.0, 1.0], (2, 1, 1, 1)), np.reshape([1.0, 0.0], (2, 1, 1))
    probabilities[:, 2:6, 2:6, 3:6] = organ
    attention = probabilities.copy()
    attention[:, 2:6, 2:4, 3] = background  # the first organ slice is uncertain
    scores = score_slices(probabilities, attention, min_area=1, end_margin=2)
    assert np.flatnonzero(scores.beyond_organ_end).tolist() == [1, 2, 6, 7]
    assert np.flatnonzero(scores.both_empty).tolist() == [0, 8, 9]
    assert scores.p_dsc[1] == scores.p_dsc[2] == scores.p_dsc[3] < 1.0
    assert scores.p_dsc[6] == scores.p_dsc[7] == scores.p_dsc[5] == 1.0
    assert scores.disagreement.tolist() == [0, 8, 8, 8, 0, 0, 0, 0, 0, 0]
    chosen = select_slices("p-dsc", [scores], [set()], 3)
    assert sorted(query.slice for query in chosen) == [1, 2, 3]
    # The end slice itself comes before the empty slices that carry its score.
    assert [query.slice for query in select_slices("disagreement", [scores], [set()], 3)] == [3, 1, 2]
    # Once those are labelled, the organ's other slices (no disagreement) fill the budget;
    # slices both heads leave empty far from the organ are never suggested.
    rest = select_slices("disagreement", [scores], [{1, 2, 3}], 10)
    assert [query.slice for query in rest] == [4, 5, 6, 7]


def test_slice_entropy_of_uniform_and_certain_predictions() -> None:
    probabilities = np.zeros((2, 3, 3, 2), dtype=np.float32)
    probabilities[:, :, :, 0] = 0.5  # uniform: log 2 per voxel
    probabilities[1, :, :, 1] = 1.0  # certain: 0
    np.testing.assert_allclose(slice_entropy(probabilities), [9 * math.log(2), 0.0], rtol=1e-6)


def scores_for(
    p_dsc: list[float], entropy: list[float] | None = None, disagreement: list[int] | None = None
) -> SliceScores:
    p_dsc = np.asarray(p_dsc, dtype=float)
    entropy = np.asarray(entropy if entropy is not None else np.zeros(len(p_dsc)), dtype=float)
    disagreement = np.asarray(disagreement if disagreement is not None else np.zeros(len(p_dsc)), dtype=int)
    return SliceScores(
        p_dsc, p_dsc.copy(), entropy, p_dsc == 1.0, np.zeros(len(p_dsc), dtype=bool), disagreement
    )


def test_p_dsc_picks_least_agreement_skipping_labelled_and_empty_slices() -> None:
    first, second = scores_for([1.0, 0.2, 0.5, 0.1, 0.9]), scores_for([0.3, 1.0, 0.05])
    queries = select_slices("p-dsc", [first, second], [{3}, set()], budget=3)
    assert [(query.volume, query.slice) for query in queries] == [(1, 2), (0, 1), (1, 0)]
    assert [query.score for query in queries] == [0.05, 0.2, 0.3]


def test_p_dsc_spread_keeps_its_picks_apart_then_fills_from_the_ranking() -> None:
    # The organ's end (slices 0-3) disagrees most; plain P-DSC takes the run 0, 1, 2.
    scores = scores_for([0.1, 0.15, 0.2, 0.25, 0.9, 0.8, 0.95, 0.3, 0.35])
    assert [query.slice for query in select_slices("p-dsc", [scores], [set()], 3)] == [0, 1, 2]
    # Spread: 0, then nothing closer than 3 slices to it or to labelled slice 6: 3 (0.25).
    spread = select_slices("p-dsc-spread", [scores], [{6}], 3)
    assert [query.slice for query in spread[:2]] == [0, 3]
    # No third slice is 3 away from 0, 3 and 6 (slice 8 is only 2 from 6): the ranking fills it.
    assert spread[2].slice == 1


def test_entropy_random_and_budget_larger_than_candidates() -> None:
    scores = scores_for([0.5, 0.5, 0.5, 0.5], entropy=[1.0, 7.0, 3.0, 9.0])
    assert [query.slice for query in select_slices("entropy", [scores], [{3}], 2)] == [1, 2]
    picked = select_slices("random", [scores], [{0, 2}], 5, np.random.default_rng(0))
    assert sorted(query.slice for query in picked) == [1, 3]


def test_disagreement_ranks_wide_disagreement_above_a_nearly_empty_end() -> None:
    """Slice 0, an organ end: SR1 3 voxels, SR2 1 -> P-DSC 0.5, 2 voxels disagree. Slice 2, mid
    organ: 400 voxels each, 40 not shared -> P-DSC 0.9, 80 voxels disagree. P-DSC asks for the
    end first, disagreement for the middle, where more voxels can be wrong."""
    scores = scores_for([0.5, 0.95, 0.9, 1.0], disagreement=[2, 20, 80, 0])
    assert [query.slice for query in select_slices("p-dsc", [scores], [set()], 2)] == [0, 2]
    queries = select_slices("disagreement", [scores], [{1}], 2)
    assert [(query.slice, query.score) for query in queries] == [(2, 80.0), (0, 2.0)]


def test_equal_interval_halves_the_gaps() -> None:
    scores = scores_for([0.5] * 33)
    queries = select_slices("equal-interval", [scores], [{0, 16, 32}], 2)
    assert [query.slice for query in queries] == [8, 24]
    assert [query.score for query in queries] == [8.0, 8.0]


def test_unknown_strategy_and_bad_budget_are_refused() -> None:
    with pytest.raises(InputError, match="unknown query strategy"):
        select_slices("margin", [scores_for([0.5])], [set()], 1)
    with pytest.raises(InputError, match="at least one slice"):
        select_slices("p-dsc", [scores_for([0.5])], [set()], 0)


def test_stop_criterion() -> None:
    assert not has_converged([0.80])
    assert not has_converged([0.80, 0.83], sigma=0.005)
    assert has_converged([0.80, 0.83, 0.833], sigma=0.005)


def test_sparse_target_marks_unlabelled_slices() -> None:
    label = np.ones((3, 3, 4), dtype=np.int64)
    target = SparseLabels(label, {1, 3}).training_target()
    assert (target[:, :, [1, 3]] == 1).all()
    assert (target[:, :, [0, 2]] == UNLABELLED).all()
    with pytest.raises(InputError, match="outside the volume"):
        SparseLabels(label, {4})


def test_sparse_labels_round_trip_with_geometry(tmp_path: Path) -> None:
    image, label = phantom_image(
        make_phantom(shape=(20, 18, 12), seed=1), spacing=(0.9, 1.1, 2.0), direction=ROTATED
    )
    sparse = SparseLabels(image_to_array(label, np.int64), {2, 7})
    path = tmp_path / "labels.nii.gz"
    write_sparse_labels(sparse, image, LABELS, path)
    assert json.loads(slices_json_path(path).read_text())["labelled_slices"] == [2, 7]
    read_image_back, read_back = read_sparse_labels(path)
    assert read_back.labelled_slices == {2, 7}
    assert read_image_back.GetDirection() == pytest.approx(image.GetDirection())
    assert read_image_back.GetSpacing() == pytest.approx(image.GetSpacing())
    np.testing.assert_array_equal(read_back.label[:, :, 7], sparse.label[:, :, 7])
    assert not read_back.label[:, :, 3].any(), "unlabelled slices are written as background"


def test_sparse_labels_without_or_with_a_foreign_slices_file_are_refused(tmp_path: Path) -> None:
    _image, label = phantom_image(make_phantom(shape=(16, 16, 8), seed=1))
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(label, str(path))
    with pytest.raises(InputError, match=r"slices\.json"):
        read_sparse_labels(path)
    slices_json_path(path).write_text(json.dumps({"size": [16, 16, 9], "labelled_slices": [1]}))
    with pytest.raises(InputError, match="do not belong together"):
        read_sparse_labels(path)


def test_effort_of_a_prefilled_and_of_a_drawn_slice_by_hand() -> None:
    prediction = np.zeros((5, 5), dtype=np.int64)
    prediction[0:2, 0:2] = 1  # 4 voxels of label 1
    prediction[4, 4] = 2  # 1 voxel of label 2
    corrected = prediction.copy()
    corrected[0, 0] = 0  # removed one voxel of label 1
    corrected[3, 0:3] = 1  # added three voxels of label 1
    corrected[4, 4] = 1  # label 2 -> 1: added (a changed label), not removed
    # Dice: label 1: prediction 4, corrected 3 + 3 + 1 = 7, shared 3 -> 6/11; label 2: 1 vs 0 -> 0.
    effort = measure_effort(corrected, prediction, prefilled=True)
    assert (effort.prefilled, effort.added, effort.removed) == (True, 4, 1)
    assert effort.dice == pytest.approx((6 / 11 + 0.0) / 2)
    # Not pre-filled: the annotator drew everything from an empty slice.
    drawn = measure_effort(corrected, prediction, prefilled=False)
    assert (drawn.prefilled, drawn.added, drawn.removed, drawn.dice) == (False, 7, 0, effort.dice)
    # No prediction known: no Dice; both empty: the model was right.
    assert measure_effort(corrected, None, prefilled=False) == SliceEffort(False, 7, 0, None)
    empty = np.zeros((5, 5), dtype=np.int64)
    assert measure_effort(empty, empty, prefilled=True) == SliceEffort(True, 0, 0, 1.0)
    with pytest.raises(ValueError, match="needs the prediction"):
        measure_effort(corrected, None, prefilled=True)
    assert effort.summary() == "+4 \u22121, Dice 0.27"
    assert SliceEffort(False, 7, 0, None).summary() == "+7 \u22120"
    assert SliceEffort.from_dict(effort.to_dict()) == effort


def test_effort_goes_into_the_slices_file_and_a_malformed_entry_is_refused(tmp_path: Path) -> None:
    image, label = phantom_image(make_phantom(shape=(12, 12, 8), seed=1))
    path = tmp_path / "labels.nii.gz"
    effort = {2: SliceEffort(True, 10, 3, 0.875), 5: SliceEffort(False, 40, 0, None)}
    # Slice 6 is not labelled: its effort is not written.
    write_sparse_labels(
        SparseLabels(image_to_array(label, np.int64), {2, 5}),
        image,
        LABELS,
        path,
        {**effort, 6: SliceEffort(True, 1, 1, 0.5)},
    )
    record = json.loads(slices_json_path(path).read_text())
    assert record["effort"]["2"] == {"prefilled": True, "added": 10, "removed": 3, "dice": 0.875}
    assert read_slice_effort(path) == effort
    assert read_sparse_labels(path)[1].labelled_slices == {2, 5}, "readers of the slices still read it"
    write_sparse_labels(SparseLabels(image_to_array(label, np.int64), {2}), image, LABELS, path)
    assert "effort" not in json.loads(slices_json_path(path).read_text())
    assert read_slice_effort(path) == {}

    malformed = {
        "a negative count": ({"2": {**effort[2].to_dict(), "added": -1}}, "at effort.2.added, -1 is less"),
        "a fractional count": (
            {"2": {**effort[2].to_dict(), "removed": 1.5}},
            "at effort.2.removed, 1.5 is not of type 'integer'",
        ),
        "a Dice above 1": ({"2": {**effort[2].to_dict(), "dice": 1.5}}, "at effort.2.dice, 1.5 is greater"),
        "prefilled as text": (
            {"2": {**effort[2].to_dict(), "prefilled": "yes"}},
            "at effort.2.prefilled, 'yes' is not of type 'boolean'",
        ),
        "a missing field": (
            {"2": {"prefilled": True, "added": 1}},
            "at effort.2, '(removed|dice)' is a required",
        ),
        "an unlabelled slice": ({"3": effort[2].to_dict()}, "'3', which is not one of the labelled"),
        "not a slice number": ({"two": effort[2].to_dict()}, "at effort, 'two' does not match"),
        "not a mapping": ([effort[2].to_dict()], "at effort, .* is not of type 'object'"),
    }
    for name, (entries, message) in malformed.items():
        slices_json_path(path).write_text(json.dumps({**record, "labelled_slices": [2], "effort": entries}))
        with pytest.raises(InputError, match=message) as error:
            read_slice_effort(path)
        assert str(slices_json_path(path)) in str(error.value), name


def test_sparse_patches_always_hold_labelled_voxels() -> None:
    label = np.full((32, 32, 40), UNLABELLED, dtype=np.int64)
    label[:, :, 35] = 0
    case = Case("sparse", np.zeros(label.shape, dtype=np.float32), label)
    sampler = PatchSampler(
        (16, 16, 8), foreground_probability=0.5, augment=True, rng=np.random.default_rng(0)
    )
    for _ in range(20):
        _, patch = sampler.sample(case)
        assert (patch != UNLABELLED).any()


def test_suggest_ranks_the_slices_of_a_rotated_volume(attention_model: ModelCard, tmp_path: Path) -> None:
    image, _ = phantom_image(make_phantom(shape=(24, 24, 20), seed=2), direction=ROTATED)
    suggestion = suggest_slices(image, attention_model, load_network(attention_model), {0, 5}, "p-dsc", 4)
    assert suggestion.scores.slice_count == 20
    chosen = [query.slice for query in suggestion.queries]
    assert not {0, 5} & set(chosen)
    assert len(set(chosen)) == len(chosen) <= 4
    values = [query.score for query in suggestion.queries]
    assert values == sorted(values)
    assert all(not suggestion.scores.both_empty[index] for index in chosen)
    random_pick = suggest_slices(image, attention_model, load_network(attention_model), {0, 5}, "random", 4)
    assert len(random_pick.queries) == 4
    record = suggestion_record(suggestion, "p-dsc", {0, 5})
    write_suggestions(record, tmp_path / "suggestions.json")
    assert read_suggestions(tmp_path / "suggestions.json")["suggested"] == record["suggested"]
    by_voxels = suggest_slices(
        image, attention_model, load_network(attention_model), {0, 5}, "disagreement", 4
    )
    counts = [query.score for query in by_voxels.queries]
    assert counts == sorted(counts, reverse=True) and counts[0] > 0
    assert counts == [by_voxels.scores.disagreement[query.slice] for query in by_voxels.queries]
    assert all(not by_voxels.scores.both_empty[query.slice] for query in by_voxels.queries)


def test_suggestion_table_shows_the_disagreement_and_reads_earlier_records() -> None:
    row = {"slice": 7, "p_dsc": 0.5, "p_accuracy": 0.5, "disagreement_voxels": 42, "entropy": 3.0}
    record = {"strategy": "disagreement", "suggested": [row], "mean_p_dsc": 0.9, "mean_p_accuracy": 0.9}
    assert format_suggestions(record).splitlines()[2].split() == ["1", "7", "0.5000", "0.5000", "42", "3.0"]
    del row["disagreement_voxels"]  # a record written before the count existed
    assert format_suggestions(record).splitlines()[2].split() == ["1", "7", "0.5000", "0.5000", "—", "3.0"]


def test_scores_come_from_both_heads() -> None:
    """Identical heads agree everywhere; a flipped head disagrees wherever there is an organ."""
    probabilities = np.zeros((3, 8, 8, 3), dtype=np.float32)
    probabilities[0] = 1.0
    probabilities[:, 2:6, 2:6, 1] = [[[0.0]], [[1.0]], [[0.0]]]
    same = score_slices(probabilities, probabilities, min_area=1, end_margin=0)
    assert same.p_dsc.tolist() == [1.0, 1.0, 1.0] and same.both_empty.tolist() == [True, False, True]
    flipped = probabilities[[0, 2, 1]]
    assert score_slices(probabilities, flipped, min_area=1).p_dsc[1] == 0.0


def test_every_model_suggests_against_its_own_second_opinion(
    tiny_model: ModelCard, confidence_model: ModelCard
) -> None:
    image, _ = phantom_image(make_phantom(shape=(16, 16, 16), seed=2))
    by_sdm = suggest_slices(image, tiny_model, load_network(tiny_model), {3}, "p-dsc", 3)
    assert by_sdm.second_opinion == "sdm"
    assert 3 not in {query.slice for query in by_sdm.queries}
    mirrored = suggest_slices(
        image, tiny_model, load_network(tiny_model), set(), "p-dsc", 3, second_opinion="mirroring"
    )
    assert mirrored.second_opinion == "mirroring" and mirrored.scores.slice_count == 16
    network = load_network(confidence_model)
    by_confidence = suggest_slices(image, confidence_model, network, set(), "entropy", 2)
    assert by_confidence.second_opinion == "confidence" and len(by_confidence.queries) == 2
    with pytest.raises(ModelError, match="'attention' second opinion; it can give sdm, mirroring"):
        suggest_slices(image, tiny_model, load_network(tiny_model), set(), second_opinion="attention")


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        ({"config": {"loss": {"confidence_target": "correctness"}}}, "confidence"),
        ({"recipe": "sparse-finetune"}, "confidence"),
        ({"config": {"loss": {}}}, "mirroring"),
        ({}, "mirroring"),
    ],
)
def test_the_confidence_map_ranks_slices_by_default_only_where_it_learnt_correctness(
    confidence_model: ModelCard, training: dict, expected: str
) -> None:
    """A confidence network trained as the papers' discriminator (DAN's Eq. 4, the default
    now) rates predictions against label maps, not where they are wrong: mirroring ranks then."""
    card = ModelCard({**confidence_model.data, "training": training}, confidence_model.directory)
    assert default_second_opinion(card) == expected
    assert "confidence" in available_second_opinions(card)


def test_second_opinions_of_the_sdm_and_the_confidence_map() -> None:
    """The SDM's organ is where its distance is negative; a doubted voxel takes the other class."""
    probabilities = np.zeros((3, 2, 2, 1), dtype=np.float32)
    probabilities[:, 0, 0, 0] = [0.7, 0.2, 0.1]  # background, doubted: becomes class 1
    probabilities[:, 0, 1, 0] = [0.1, 0.2, 0.7]  # class 2, doubted: becomes background
    probabilities[:, 1, 0, 0] = [0.1, 0.8, 0.1]  # class 1, trusted: stays
    probabilities[:, 1, 1, 0] = [0.8, 0.1, 0.1]  # background, trusted: stays
    reference = sitk.Image([2, 2, 1], sitk.sitkFloat32)

    def image(values: list) -> sitk.Image:
        return array_to_image(np.array(values, dtype=np.float32)[:, :, None], reference)

    vector = sitk.GetImageFromArray(np.ascontiguousarray(probabilities.transpose(3, 2, 1, 0)), isVector=True)
    result = SegmentationResult(
        label_map=array_to_image(probabilities.argmax(axis=0), reference),
        labels=LABELS,
        probabilities=vector,
        confidence=image([[0.2, 0.4], [0.9, 0.6]]),
        sdm={1: image([[0.5, -0.1], [-0.4, 0.2]]), 2: image([[-0.2, -0.3], [0.1, 0.3]])},
    )
    assert confidence_labels(result)[:, :, 0].tolist() == [[1, 0], [1, 0]]
    card = ModelCard({"labels": [label.to_dict() for label in LABELS]}, Path("."))
    assert sdm_labels(result, card)[:, :, 0].tolist() == [[2, 2], [1, 0]]
