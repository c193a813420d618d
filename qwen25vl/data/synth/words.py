"""Words the text engines draw: small built-in lists in the scripts DejaVu covers (Latin, Greek, Cyrillic), plus
numbers, codes, prices and dates, so digits are frequent."""

from __future__ import annotations

import random

ENGLISH = """time year people way day man thing woman life child world school state family student group country
problem hand part place case week company system program question work government number night point home water
room mother area money story fact month lot right study book eye job word business issue side kind head house
service friend father power hour game line end member law car city community name president team minute idea
kid body information back parent face others level office door health person art war history party result change
morning reason research girl guy moment air teacher force education river garden window market letter paper
station bridge mountain orange yellow purple silver golden quiet rapid gentle bright simple modern ancient""".split()

FRENCH_GERMAN_SPANISH = """maison jardin soleil fenêtre école rivière château forêt été très garçon déjà naïve
straße grün schön über mädchen brücke größe fräulein müde stadt wasser häuser
niño mañana corazón canción árbol jardín pequeño señor ciudad rápido""".split()

GREEK = """καλημέρα θάλασσα ήλιος βιβλίο σπίτι δρόμος νερό φίλος πόλη χώρα γλώσσα μουσική ουρανός
άνθρωπος ζωή ημέρα νύχτα αγάπη παιδί σχολείο δάσος βουνό αέρας φως χρόνος λέξη""".split()

RUSSIAN = """привет мир город дом вода книга солнце время человек жизнь работа слово рука глаз ночь
день друг земля окно дорога школа небо лес река море улица музыка язык""".split()

SCRIPTS = {"latin": ENGLISH, "accented": FRENCH_GERMAN_SPANISH, "greek": GREEK, "cyrillic": RUSSIAN}


def number_token(rng: random.Random) -> str:
    """A number as documents print them: an integer, a decimal, a price, a percentage, a date or a code."""
    kind = rng.randrange(6)
    if kind == 0:
        return str(rng.randint(0, 99999))
    if kind == 1:
        return f"{rng.uniform(0, 1000):.{rng.randint(1, 2)}f}"
    if kind == 2:
        return f"{rng.choice('$€£')}{rng.randint(1, 999)}.{rng.randint(0, 99):02d}"
    if kind == 3:
        return f"{rng.randint(1, 100)}%"
    if kind == 4:
        return f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(rng.randint(2, 3)))
    return f"{letters}-{rng.randint(100, 9999)}"


def word(rng: random.Random, script: str | None = None) -> str:
    """One word of `script` (random when None); about one in five is a number or code."""
    if script is None and rng.random() < 0.2:
        return number_token(rng)
    words = SCRIPTS[script or rng.choice(tuple(SCRIPTS))]
    w = rng.choice(words)
    style = rng.random()
    return w.capitalize() if style < 0.3 else w.upper() if style < 0.4 else w


def phrase(rng: random.Random, lo: int, hi: int, script: str | None = None) -> str:
    """`lo`..`hi` words of one script (numbers mixed in), space-separated."""
    script = script or rng.choice(tuple(SCRIPTS))
    return " ".join(number_token(rng) if rng.random() < 0.15 else word(rng, script) for _ in range(rng.randint(lo, hi)))


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    """A capitalised run of words ending in a full stop (Latin script: paragraphs of documents)."""
    text = phrase(rng, lo, hi, "latin")
    return text[0].upper() + text[1:] + "."
