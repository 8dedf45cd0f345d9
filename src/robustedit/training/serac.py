"""Training SERAC's scope classifier and counterfactual model (``robustedit train serac``).

Each step takes ``batch_size`` training edits and makes one Adam step on both trained parts
(their parameters are disjoint, so this is two independent optimisations sharing a batch):

- *classifier*: binary cross-entropy over every (query, edit) pair of the batch. A query is an
  edit's prompt or rephrase, followed half of the time by a candidate answer (the new target, the
  true one or another edit's), as teacher-forced scoring presents them; it is in scope of its own
  edit only. The edit's unrelated ``loc`` question (with or without its answer) is in scope of none,
  nor is the edit's prompt with another edit's subject (a CounterFact neighbour is just that).
- *counterfactual model*: the NLL of the new target after ``context(edit) + query``, for the
  prompt and the rephrase. With SSS (``serac+sss``) this loss becomes (1 − C)·NLL + C·λ_max,
  λ_max over the input embeddings of those sequences (the counterfactual model's own input).
"""

from __future__ import annotations

import dataclasses
import random

import torch
import torch.nn.functional as F

from robustedit.data import load_cases
from robustedit.editors.serac import SERACConfig, SERACSystem
from robustedit.editors.sss import SSSConfig, edit_loss_and_sss, teacher_forced
from robustedit.errors import UserError
from robustedit.models.load import LanguageModel
from robustedit.training.loop import batch_indices, split_cases
from robustedit.training.mend import Example, examples, token_accuracy


STANDARDISE_ON = 200  # training edits whose texts fix the classifier's feature standardisation


def with_answer(question: str, answer: str | None) -> str:
    return question if answer is None else f"{question} {answer}"


class SERACTask:
    """The :class:`~robustedit.training.loop.TrainTask` of SERAC (and SERAC + SSS)."""

    def __init__(self, lm: LanguageModel, cfg: SERACConfig, editor: str) -> None:
        self.lm, self.cfg, self.editor, self.tc = lm, cfg, editor, cfg.train
        self.sss: SSSConfig | None = getattr(cfg, "sss", None)
        train, val = split_cases(examples(load_cases(cfg.train.dataset)), cfg.train.val_fraction)
        if len(train) < 2:
            raise UserError(f"{cfg.train.dataset} has too few cases with locality prompts to train SERAC on")
        self.train, self.val = train, val[: cfg.train.val_cases]
        torch.manual_seed(cfg.train.seed)
        self.system = SERACSystem(lm, cfg)
        self.module = self.system.trained
        for p in self.module["cf_layers"].parameters():
            p.requires_grad_(True)
        sample = [t for e in self.train[:STANDARDISE_ON] for t in (e.prompt, e.rephrase, e.loc_prompt)]
        self.module["head"].fit_standardisation(torch.cat([self.system.encoder(sample[i: i + 64])
                                                           for i in range(0, len(sample), 64)]))
        self.optimizer = torch.optim.Adam([
            {"params": list(self.module["head"].parameters()), "lr": cfg.train.classifier_lr},
            {"params": list(self.module["cf_layers"].parameters()), "lr": cfg.train.lr}])

    def _classifier_batch(self, batch: list[Example], rng: random.Random) -> tuple[list[str], torch.Tensor]:
        """Queries and their (n_queries, n_edits) in-scope labels. Besides the edit's prompt and
        rephrase (in scope of it) and its loc question (of none), the edit's prompt with the next
        edit's subject written in is a hard negative: same wording, another subject."""
        answers = [e.target for e in batch] + [e.request.target_true or e.target for e in batch]
        queries, labels = [], []
        for i, e in enumerate(batch):
            swapped = e.request.prompt.format(batch[(i + 1) % len(batch)].request.subject)
            for question, answer, own in ((e.prompt, e.target, True), (e.rephrase, rng.choice(answers), True),
                                          (e.loc_prompt, e.loc_answer, False), (swapped, rng.choice(answers), False)):
                queries.append(with_answer(question, answer if rng.random() < 0.5 else None))
                labels.append([float((own and j == i) or question == other.prompt) for j, other in enumerate(batch)])
        return queries, torch.tensor(labels, device=self.lm.device)

    def _classifier_loss(self, batch: list[Example], rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        queries, labels = self._classifier_batch(batch, rng)
        logits = self.module["head"](self.system.encoder(queries), self.system.encoder([e.prompt for e in batch]))
        return F.binary_cross_entropy_with_logits(logits, labels), ((logits > 0).float() == labels).float().mean()

    def _cf_inputs(self, batch: list[Example]):
        prompts, targets = [], []
        for e in batch:
            context = self.cfg.context.format(prompt=e.prompt, target=e.target)
            prompts += [context + e.prompt, context + e.rephrase]
            targets += [e.target, e.target]
        return teacher_forced(self.system.cf, prompts, targets)

    def train_step(self, step: int) -> dict[str, float]:
        batch = [self.train[i] for i in batch_indices(len(self.train), self.tc.batch_size, step, self.tc.seed)]
        rng = random.Random(self.tc.seed * 7919 + step)
        cls_loss, cls_acc = self._classifier_loss(batch, rng)
        with torch.enable_grad():
            nll, lam = edit_loss_and_sss(self.system.cf, self._cf_inputs(batch), self.sss)
        cf_loss = nll if lam is None else (1 - self.sss.coefficient) * nll + self.sss.coefficient * lam
        self.optimizer.zero_grad()
        (cls_loss + cf_loss).backward()
        self.optimizer.step()
        logged = {"cls_loss": float(cls_loss.detach()), "cf_nll": float(nll.detach()), "cls_acc": float(cls_acc)}
        if lam is not None:
            logged["sss"] = float(lam.detach())
        return logged

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Held-out edits, all in memory at once: does each prompt and rephrase retrieve its own
        edit, does each loc question retrieve none, and does the counterfactual model answer."""
        memory = [e.request for e in self.val]
        sys = self.system
        _, p_loc = sys.scope([e.loc_prompt for e in self.val], memory)
        best, p_reph = sys.scope([e.rephrase for e in self.val], memory)
        best_p, p_prompt = sys.scope([e.prompt for e in self.val], memory)
        _, p_swap = sys.scope([e.request.prompt.format(self.val[(i + 1) % len(self.val)].request.subject)
                               for i, e in enumerate(self.val)], memory)
        own = torch.arange(len(self.val), device=best.device)
        thr = self.cfg.threshold
        tf = self._cf_inputs(self.val)
        logits = sys.cf.model(input_ids=tf.batch.input_ids, attention_mask=tf.batch.attention_mask, use_cache=False).logits
        acc = token_accuracy(logits, tf)
        return {"val_scope_prompt": float(((p_prompt >= thr) & (best_p == own)).float().mean()),
                "val_scope_rephrase": float(((p_reph >= thr) & (best == own)).float().mean()),
                "val_out_of_scope_loc": float((p_loc < thr).float().mean()),
                "val_out_of_scope_swapped_subject": float((p_swap < thr).float().mean()),
                "val_cf_prompt_acc": float(acc[0::2].mean()), "val_cf_rephrase_acc": float(acc[1::2].mean())}

    def export(self):
        return self.module.state_dict(), {"editor": self.editor, "model": self.lm.name,
                                          "fingerprint": self.lm.fingerprint,
                                          "config": dataclasses.asdict(self.cfg),
                                          "n_train": len(self.train), "n_val": len(self.val)}
