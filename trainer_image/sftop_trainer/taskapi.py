"""The Task API dataset: natural-language task requests -> the Task API JSON call they mean.

The demo, the quality benchmark and the tests train on it. Titles are built from verbs and objects (several
thousand distinct ones); `split()` gives training rows and held-out requests whose titles never occur in
training, so a score on the held-out requests measures what the model learnt, not what it memorised.

    {"action": "create", "title": "renew the TLS certificate", "due": "friday", "priority": "high"}
    {"action": "complete", "title": "water the plants"}
    {"action": "delete", "title": "book a dentist appointment"}
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

# verb -> objects it takes; every (verb, object) pair is a title
_TASKS: dict[str, list[str]] = {
    "renew": ["the TLS certificate", "the passport", "the gym membership", "the car insurance", "the domain name",
              "the library books", "the parking permit", "the software license", "the lease", "the visa"],
    "water": ["the plants", "the garden", "the tomato seedlings", "the lawn", "the herbs on the balcony"],
    "book": ["a dentist appointment", "the flights to Lisbon", "a table for four", "the meeting room",
             "a haircut", "the train to Berlin", "a car service", "the conference hotel", "a plumber visit"],
    "pay": ["the electricity bill", "the rent", "the phone bill", "the parking fine", "the invoice from Acme",
            "the water bill", "the credit card", "the internet bill", "the babysitter", "the council tax"],
    "review": ["the pull request", "the design doc", "the budget", "the contract", "the quarterly numbers",
               "the incident report", "the hiring plan", "the release notes", "the test plan", "the roadmap"],
    "call": ["the plumber", "mom", "the bank", "the landlord", "the insurance company", "the vet",
             "the electrician", "grandpa", "the recruiter", "the school"],
    "back up": ["the laptop", "the photos", "the database", "the phone", "the wiki", "the family videos"],
    "prepare": ["the quarterly report", "the slides for Monday", "the tax return", "the onboarding guide",
                "the sprint demo", "the board update", "the lunch boxes", "the guest room"],
    "buy": ["coffee beans", "a birthday gift for Sam", "new running shoes", "printer ink", "dog food",
            "train tickets", "light bulbs", "a winter coat", "groceries", "concert tickets", "batteries"],
    "update": ["the on-call rota", "the README", "the CV", "the team calendar", "the dependencies",
               "the firewall rules", "the budget sheet", "the status page", "the address book"],
    "clean": ["the garage", "the fridge", "the oven", "the windows", "the bathroom", "the car",
              "the gutters", "the attic", "the keyboard"],
    "reply to": ["the landlord", "the recruiter", "Anna's email", "the customer complaint",
                 "the wedding invitation", "the auditor", "the new client"],
    "rotate": ["the database password", "the API keys", "the SSH keys", "the signing certificate",
               "the backup tapes"],
    "plan": ["the team offsite", "the birthday party", "the summer holiday", "the product launch",
             "the kitchen renovation", "the weekly menu", "the move to the new office"],
    "fix": ["the flaky test", "the leaking tap", "the login bug", "the bike brakes", "the broken fence",
            "the memory leak", "the garden gate", "the slow query", "the squeaky door"],
    "order": ["new badges", "a new monitor", "the team t-shirts", "office chairs", "pizza for the party",
              "spare parts", "more paper", "a standing desk"],
    "send": ["the invoice", "the thank-you cards", "the meeting notes", "the signed contract",
             "the weekly newsletter", "the package to Tom", "the offer letter"],
    "schedule": ["the one-on-one with Priya", "the car inspection", "a vaccination", "the retro",
                 "the piano lesson", "the interview with Lee", "the eye exam", "the database migration"],
    "cancel": ["the magazine subscription", "the old phone plan", "the hotel booking", "the standing order",
               "the streaming service", "the dentist appointment"],
    "submit": ["the expense report", "the grant application", "the timesheet", "the conference talk",
               "the visa form", "the security review"],
    "pick up": ["the dry cleaning", "the kids from school", "the prescription", "the new glasses",
                "the parcel at the post office", "the rental car"],
    "return": ["the library books", "the borrowed drill", "the faulty headphones", "the rental car",
               "the jacket that does not fit"],
    "write": ["the blog post", "the postmortem", "the wedding speech", "the unit tests", "a letter to the council",
              "the job description"],
    "check": ["the tyre pressure", "the smoke alarms", "the bank statement", "the server logs",
              "the train times", "the passport expiry date"],
    "organize": ["the bookshelf", "the shared drive", "the toolbox", "the photo albums", "the spice rack",
                 "the team hackathon"],
}
# an optional tail on a title: several thousand distinct titles in all
_QUALIFIERS = ["", " before the holidays", " for the team", " with Alex", " at the office", " at home", " for Dad",
               " once more", " for the new project", " before the trip"]
_DUE = ["today", "tomorrow", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
        "next week", "next month"]
# how a request says its due date; {d} is the due value
_DUE_PHRASES = {"today": ["today", "by tonight", "by end of day"], "tomorrow": ["tomorrow", "by tomorrow"],
                "next week": ["next week", "sometime next week"], "next month": ["next month"]}
_PRIORITY_PHRASES = {"high": ["urgently", "asap", "it's urgent", "high priority", "this is important"],
                     "low": ["whenever", "no rush", "low priority", "when you get a chance"],
                     "normal": [""]}
_REQUESTS = {
    "create": ["Remind me to {t}{due}{prio}", "Add a task to {t}{due}{prio}", "I need to {t}{due}{prio}",
               "Create a task: {t}{due}{prio}", "Don't let me forget to {t}{due}{prio}",
               "Can you add '{t}' to my list{due}{prio}", "New task: {t}{due}{prio}",
               "Put '{t}' on my list{due}{prio}"],
    "complete": ["I finished: {t}", "Mark '{t}' as done", "Done with {t}", "I've managed to {t}",
                 "Tick off '{t}'", "Completed: {t}"],
    "delete": ["Remove the task to {t}", "Delete '{t}' from my list", "Never mind about {t}",
               "Drop '{t}', I won't do it", "Scratch '{t}' off the list"],
}


def titles() -> list[str]:
    """Every title the generator knows, in a fixed order."""
    return [f"{verb} {obj}{tail}" for verb, objects in _TASKS.items() for obj in objects for tail in _QUALIFIERS]


def held_out(title: str, fraction: float) -> bool:
    """Whether a title belongs to the held-out set: a stable hash, so the split never depends on a seed."""
    digest = hashlib.sha256(title.encode()).digest()
    return int.from_bytes(digest[:4], "big") < fraction * 2**32


def example(rng: random.Random, title: str) -> tuple[str, dict[str, Any]]:
    """A natural-language request about `title` and the Task API call it means."""
    action = rng.choices(["create", "complete", "delete"], weights=[3, 1, 1])[0]
    template = rng.choice(_REQUESTS[action])
    if action != "create":
        return template.format(t=title), {"action": action, "title": title}
    due = rng.choice(_DUE + [None, None, None])
    priority = rng.choices(["high", "normal", "low"], weights=[1, 2, 1])[0]
    due_text = f" {rng.choice(_DUE_PHRASES.get(due, ['on ' + due]))}" if due else ""
    if due in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"):
        due_text = f" {rng.choice(['on ' + due, 'by ' + due, due])}"
    word = rng.choice(_PRIORITY_PHRASES[priority])
    request = template.format(t=title, due=due_text, prio=f", {word}" if word else "")
    return request, {"action": "create", "title": title, "due": due, "priority": priority}


def as_row(request: str, call: dict[str, Any], fmt: str = "messages") -> dict[str, Any]:
    """One row in one of the formats the trainer reads."""
    answer = json.dumps(call)
    if fmt == "messages":
        return {"messages": [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]}
    if fmt == "sharegpt":
        return {"conversations": [{"from": "human", "value": request}, {"from": "gpt", "value": answer}]}
    if fmt == "prompt-completion":
        return {"prompt": f"Request: {request}\nCall: ", "completion": answer}
    if fmt == "conversational-prompt-completion":
        return {"prompt": [{"role": "user", "content": request}],
                "completion": [{"role": "assistant", "content": answer}]}
    if fmt == "instruction":
        return {"instruction": "Turn the request into a Task API call.", "input": request, "output": answer}
    if fmt == "text":
        return {"text": f"Request: {request}\nCall: {answer}"}
    raise ValueError(f"unknown format {fmt}")


def rows(n: int, seed: int = 0, fmt: str = "messages", *, part: str = "all",
         held_out_fraction: float = 0.15) -> list[dict[str, Any]]:
    """n distinct rows (no request occurs twice). `part`: `train` draws only titles outside the held-out set,
    `test` only titles inside it, `all` any title."""
    pool = titles()
    if part != "all":
        pool = [t for t in pool if held_out(t, held_out_fraction) == (part == "test")]
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct requests from {len(pool)} titles ({part})")
        request, call = example(rng, rng.choice(pool))
        if request in seen:
            continue
        seen.add(request)
        out.append(as_row(request, call, fmt))
    return out


def split(train: int, test: int, seed: int = 0, fmt: str = "messages") -> tuple[list[dict], list[dict]]:
    """Training rows and held-out rows whose titles never occur in training."""
    return rows(train, seed, fmt, part="train"), rows(test, seed + 1, fmt, part="test")


def write_jsonl(items: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path
