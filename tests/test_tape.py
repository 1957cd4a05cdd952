"""The tape engine on graphs small enough to account for by hand."""

from __future__ import annotations

from memplan.tape import Tape, param


def test_linear_chain_forward_backward_bytes():
    tp = Tape()
    w = param(100, 4, "w")
    x = tp.alloc(10, 4)  # an input that needs no grad: 40 B
    y = tp.op1("linear", [x, w], 20, 4, saved=[x, w])  # 80 B, saves x
    x.drop()  # still saved by the node
    loss = tp.op1("sum", [y], 1, 4)
    y.drop()  # freed: nothing saved it
    assert tp.live["activations"] == 40 + 4
    tp.set_phase("backward")
    tp.backward(loss)
    # at the linear's backward: saved x (40), grad of y (80) and the weight grad (400); the
    # loss and its grad were already released by the sum's backward
    assert tp.peaks["backward"].total == 40 + 80 + 400
    assert tp.live["gradients"] == 400
    assert tp.live["activations"] == 0  # saved x released after its node ran
    tp.free_param_grads()
    assert tp.total == 0


def test_views_keep_base_alive_and_share_gradient():
    tp = Tape()
    a = tp.alloc(8, 4, requires_grad=True)
    v = tp.view(a)
    a.drop()
    assert tp.live["activations"] == 32  # the view keeps the storage
    v.drop()
    assert tp.live["activations"] == 0


def test_checkpoint_recomputes_in_backward():
    tp = Tape()
    w = param(4, 4, "w")
    x = tp.alloc(10, 4, requires_grad=True)

    def seg():
        h = tp.op1("mul", [x, w], 10, 4, saved=[x, w])
        y = tp.op1("relu", [h], 10, 4, saved=[h])
        h.drop()
        return y

    y = tp.checkpoint(seg, [x])
    # only the segment input (x) and output (y) are alive: h was not saved
    assert tp.live["activations"] == 40 + 40
    loss = tp.op1("sum", [y], 1, 4)
    y.drop()
    tp.set_phase("backward")
    tp.backward(loss)
    # the recomputed h (40 B) lived during backward as a temporary
    assert tp.peaks["backward"].categories["temporaries"] >= 40
    assert tp.live["gradients"] == 16


def test_peak_is_max_of_phase_totals_not_sum_of_category_maxima():
    tp = Tape()
    a = tp.alloc(100, 1)
    a.drop()
    tp.set_phase("backward")
    b = tp.alloc(50, 1)
    b.drop()
    assert max(p.total for p in tp.peaks.values()) == 100
