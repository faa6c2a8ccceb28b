"""A small hand-labelled part-of-speech sample of web/COCO-style captions (written for this project).

Each word carries the coarse class that CLIPA's syntax reduction distinguishes: N (nouns, Penn NN*), J (adjectives,
JJ*), V (verbs, VB*, including participles and gerunds used verbally), O (everything else: determiners,
prepositions, conjunctions, pronouns, adverbs, numbers, punctuation). Captions with genuinely ambiguous Penn tags
(e.g. "next to", "hand drawn") were left out so the labels are unambiguous.
"""

LABELLED = [
    "A/O man/N riding/V a/O horse/N on/O a/O sandy/J beach/N at/O sunset/N ./O",
    "Two/O dogs/N are/V playing/V with/O a/O red/J ball/N in/O the/O park/N ./O",
    "A/O pizza/N with/O cheese/N and/O fresh/J basil/N on/O a/O wooden/J table/N ./O",
    "The/O old/J woman/N is/V reading/V a/O book/N near/O the/O window/N ./O",
    "A/O group/N of/O people/N standing/V in/O front/N of/O a/O large/J building/N ./O",
    "Black/J and/O white/J photo/N of/O a/O cat/N sleeping/V on/O a/O blue/J couch/N ./O",
    "A/O small/J boat/N floats/V on/O the/O calm/J lake/N under/O a/O cloudy/J sky/N ./O",
    "Children/N play/V football/N in/O a/O muddy/J field/N after/O school/N ./O",
    "A/O plate/N of/O spaghetti/N with/O tomato/N sauce/N and/O meatballs/N ./O",
    "The/O red/J car/N is/V parked/V beside/O a/O tall/J tree/N ./O",
    "A/O young/J girl/N holds/V an/O umbrella/N in/O the/O rain/N ./O",
    "Modern/J kitchen/N with/O white/J cabinets/N and/O a/O stainless/J steel/N refrigerator/N ./O",
    "A/O brown/J bear/N walks/V slowly/O through/O the/O tall/J grass/N ./O",
    "Vintage/J poster/N of/O a/O city/N skyline/N at/O night/N ./O",
    "Someone/N is/V cutting/V a/O birthday/N cake/N with/O a/O knife/N ./O",
    "A/O bird/N sits/V on/O a/O branch/N of/O a/O green/J tree/N ./O",
    "Three/O white/J sheep/N graze/V on/O a/O hill/N ./O",
    "A/O happy/J couple/N walks/V along/O the/O beach/N holding/V hands/N ./O",
    "Illustration/N of/O a/O cute/J fox/N in/O the/O snow/N ./O",
    "The/O chef/N prepares/V fresh/J vegetables/N in/O a/O busy/J restaurant/N ./O",
    "An/O airplane/N flies/V over/O the/O snowy/J mountains/N ./O",
    "Close-up/N of/O a/O yellow/J flower/N with/O a/O bee/N ./O",
    "A/O student/N writes/V notes/N in/O a/O notebook/N during/O class/N ./O",
    "Empty/J street/N with/O old/J houses/N and/O a/O bicycle/N leaning/V against/O a/O wall/N ./O",
    "Woman/N wearing/V a/O black/J dress/N and/O sunglasses/N ./O",
    "Fresh/J fruit/N is/V sold/V at/O the/O local/J market/N ./O",
    "A/O tiny/J kitten/N looks/V at/O its/O reflection/N in/O a/O mirror/N ./O",
    "Stock/N photo/N of/O a/O businessman/N talking/V on/O the/O phone/N ./O",
    "The/O kids/N built/V a/O big/J sandcastle/N on/O the/O shore/N ./O",
    "Delicious/J chocolate/N cake/N topped/V with/O strawberries/N ./O",
]


def parsed() -> list[tuple[str, list[str], list[str]]]:
    """(caption text, words, coarse labels) for each labelled caption."""
    out = []
    for line in LABELLED:
        pairs = [tok.rsplit("/", 1) for tok in line.split()]
        words = [w for w, _ in pairs]
        labels = [c for _, c in pairs]
        text = " ".join(words).replace(" .", ".")
        out.append((text, words, labels))
    return out
