"""Hand-curated English vocabulary and the morphology that inflects it, for the synthetic stories.

Why hand-curated rather than a word-list package: the corpus must be byte-identical for a seed on
every machine and every dependency version. A list that ships with a package (Faker's names,
inflect's rules) can change in a minor release and silently change the training data. Here the
word lists and the rules that inflect them are both in this file, so a corpus hash only changes
when this file does.

The lists are short strings of entries; small flags attached to an entry say which derivations are
correct for that word (English morphology is not regular enough to apply every rule to every
word: *happily* but not *shily*, *unkind* but not *unpolite*). The rules below then compose:

* nouns: plural (``child/children`` lists an irregular plural explicitly),
  closed compounds ``snow+man`` whose plural inflects the head (*snowmen*, *bookshelves*);
* verbs: 3rd-person singular, past, ``-ing``; ``*`` doubles the final consonant (*stopped*),
  an explicit second word is an irregular past (``run* ran``); ``@`` allows an ``-er`` agent noun
  (*baker*, *swimmer*), ``^`` a ``re-`` verb (*repaint*, *rebuilt*);
* adjectives: ``<`` comparative/superlative (``good:better:best`` when irregular), ``~`` a ``-ly``
  adverb, ``!`` an ``un-`` adjective, ``%`` a ``-ness`` noun; ``*`` doubles as for verbs.

Every surface form gets exactly one part of speech (:func:`build_categories` refuses a word that
two lists claim), so the routing analysis can label tokens without ambiguity.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

VOWELS = frozenset("aeiou")


# --------------------------------------------------------------------------- morphology rules
def _consonant_y(word: str) -> bool:
    return len(word) >= 2 and word[-1] == "y" and word[-2] not in VOWELS


def _sibilant(word: str) -> bool:
    return word.endswith(("s", "x", "z", "ch", "sh"))


def pluralize(noun: str) -> str:
    """Regular English plural; irregular ones are looked up first (the lists register them)."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if _sibilant(noun):
        return noun + "es"
    if _consonant_y(noun):
        return noun[:-1] + "ies"
    return noun + "s"


def third_person(verb: str) -> str:
    """Present tense, 3rd person singular: *runs*, *watches*, *carries*, *goes*, *has*."""
    special = {"have": "has", "do": "does", "go": "goes", "be": "is"}
    if verb in special:
        return special[verb]
    if _sibilant(verb) or (verb.endswith("o") and verb[-2:-1] not in VOWELS):
        return verb + "es"
    if _consonant_y(verb):
        return verb[:-1] + "ies"
    return verb + "s"


def past_regular(verb: str, double: bool) -> str:
    """Regular past tense: *baked*, *cried*, *stopped* (``double``), *played*."""
    if double:
        return verb + verb[-1] + "ed"
    if verb.endswith("e"):
        return verb + "d"
    if _consonant_y(verb):
        return verb[:-1] + "ied"
    return verb + "ed"


def present_participle(verb: str, double: bool) -> str:
    """The ``-ing`` form: *tying*, *running* (``double``), *baking*, *seeing*, *tiptoeing*."""
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if double:
        return verb + verb[-1] + "ing"
    if verb.endswith("e") and not verb.endswith(("ee", "oe", "ye")):
        return verb[:-1] + "ing"
    return verb + "ing"


def agent_noun(verb: str, double: bool) -> str:
    """The doer of a verb: *baker*, *swimmer*, *reader* (only for verbs flagged ``@``)."""
    if double:
        return verb + verb[-1] + "er"
    if verb.endswith("e"):
        return verb + "r"
    return verb + "er"


def compare(adjective: str, double: bool, suffix: str) -> str:
    """Comparative (``suffix="er"``) or superlative (``"est"``): *bigger*, *nicest*, *happier*."""
    if double:
        return adjective + adjective[-1] + suffix
    if adjective.endswith("e"):
        return adjective + suffix[1:]
    if _consonant_y(adjective):
        return adjective[:-1] + "i" + suffix
    return adjective + suffix


def adverb_of(adjective: str) -> str:
    """Manner adverb: *quickly*, *happily*, *gently*, *truly*, *magically*, *fully*."""
    if adjective.endswith("ic"):
        return adjective + "ally"
    if adjective.endswith("ll"):
        return adjective + "y"
    if adjective.endswith("ue"):
        return adjective[:-1] + "ly"
    if adjective.endswith("le") and len(adjective) > 2 and adjective[-3] not in VOWELS:
        return adjective[:-1] + "y"
    if _consonant_y(adjective):
        return adjective[:-1] + "ily"
    return adjective + "ly"


def ness_of(adjective: str) -> str:
    """Abstract noun: *kindness*, *happiness*."""
    if _consonant_y(adjective):
        return adjective[:-1] + "iness"
    return adjective + "ness"


def indefinite_article(word: str) -> str:
    """*an* before a vowel sound: *an owl*, *an hour*, *an honest*, but *a usual*, *a unicorn*."""
    if word.startswith(("hour", "hon")):
        return "an"
    if word.startswith(("use", "usu", "uni", "eu", "one")):
        return "a"
    return "an" if word[0] in VOWELS else "a"


# --------------------------------------------------------------------------- word records
@dataclass(frozen=True)
class Noun:
    singular: str
    plural: str

    def form(self, count: int) -> str:
        return self.singular if count == 1 else self.plural

    @property
    def invariant(self) -> bool:
        """*sheep*, *fish*: number is invisible, so useless for agreement sentences."""
        return self.singular == self.plural

    @property
    def article(self) -> str:
        return indefinite_article(self.singular)


@dataclass(frozen=True)
class Verb:
    base: str
    s: str  # 3rd person singular present
    past: str
    ing: str

    @property
    def forms(self) -> tuple[str, ...]:
        return (self.base, self.s, self.past, self.ing)


@dataclass(frozen=True)
class Adjective:
    base: str
    comparative: str | None = None
    superlative: str | None = None
    adverb: str | None = None
    negated: str | None = None  # un- form
    ness: str | None = None

    @property
    def article(self) -> str:
        return indefinite_article(self.base)


# --------------------------------------------------------------------------- parsers
def words(text: str) -> list[str]:
    """Whitespace-separated words of a literal block."""
    return text.split()


def _entries(text: str) -> list[str]:
    return [entry.strip() for entry in text.replace("\n", ",").split(",") if entry.strip()]


def _nouns(text: str) -> tuple[Noun, ...]:
    """``"cat, child/children"`` -> Nouns; an explicit plural is also registered as irregular."""
    out = []
    for entry in _entries(text):
        singular, _, plural = entry.partition("/")
        if plural:
            IRREGULAR_PLURALS.setdefault(singular, plural)
        out.append(Noun(singular, plural or pluralize(singular)))
    return tuple(out)


def _compounds(text: str) -> tuple[Noun, ...]:
    """``"snow+man"`` -> ``Noun("snowman", "snowmen")``: the head noun carries the plural."""
    out = []
    for entry in _entries(text):
        modifier, head = entry.split("+")
        out.append(Noun(modifier + head, modifier + pluralize(head)))
    return tuple(out)


def _split_flags(entry: str, flag_chars: str) -> tuple[str, str]:
    word = entry.rstrip(flag_chars)
    return word, entry[len(word) :]


def _verbs(text: str) -> tuple[tuple[Verb, str, bool], ...]:
    """``"run* ran @"`` -> (Verb, flags, doubled); the past is regular unless given."""
    out = []
    for entry in _entries(text):
        parts = entry.split()
        base, double = parts[0].rstrip("*"), parts[0].endswith("*")
        past = next((p for p in parts[1:] if p[0].isalpha()), None)
        flags = "".join(p for p in parts[1:] if not p[0].isalpha())
        verb = Verb(
            base,
            third_person(base),
            past or past_regular(base, double),
            present_participle(base, double),
        )
        out.append((verb, flags, double))
    return tuple(out)


def _adjectives(text: str) -> tuple[Adjective, ...]:
    out = []
    for entry in _entries(text):
        word, flags = _split_flags(entry, "*<~!%")
        double = "*" in flags
        if ":" in word:
            word, comparative, superlative = word.split(":")
        elif "<" in flags:
            comparative, superlative = compare(word, double, "er"), compare(word, double, "est")
        else:
            comparative = superlative = None
        out.append(
            Adjective(
                word,
                comparative,
                superlative,
                adverb_of(word) if "~" in flags else None,
                "un" + word if "!" in flags else None,
                ness_of(word) if "%" in flags else None,
            )
        )
    return tuple(out)


IRREGULAR_PLURALS: dict[str, str] = {
    "man": "men",
    "woman": "women",
    "child": "children",
    "person": "people",
    "foot": "feet",
    "tooth": "teeth",
    "mouse": "mice",
    "goose": "geese",
    "leaf": "leaves",
    "shelf": "shelves",
    "knife": "knives",
    "wolf": "wolves",
    "loaf": "loaves",
    "calf": "calves",
    "scarf": "scarves",
    "elf": "elves",
    "fish": "fish",
    "sheep": "sheep",
    "deer": "deer",
}

# --------------------------------------------------------------------------- names
# (name, pronoun). Names are a closed list so that a name never changes between versions.
_FEMALE = """
Mia, Emma, Olivia, Ava, Sophia, Isabella, Lily, Chloe, Grace, Zoe, Nora, Lucy, Ella, Anna, Ana,
Hannah, Sarah, Leah, Alice, Clara, Stella, Luna, Maya, Layla, Zara, Amelia, Evelyn, Abigail,
Emily, Madison, Scarlett, Victoria, Aria, Penelope, Nova, Bella, Sadie, Julia, Molly, Elsie,
Freya, Isla, Esme, Phoebe, Matilda, Florence, Imogen, Heidi, Greta, Ingrid, Astrid, Elena, Sofia,
Lucia, Camila, Valentina, Gabriela, Mariana, Paula, Carmen, Rosa, Lola, Marta, Ines, Beatriz,
Fatima, Aisha, Amira, Yasmin, Noor, Leila, Priya, Anika, Meera, Asha, Divya, Kavya, Mei, Lin,
Yuki, Hana, Sakura, Aiko, Mina, Ngozi, Amara, Zuri, Imani, Nia, Chioma, Adaeze, Kemi, Halima,
Olga, Irina, Katya, Vera, Nina, Tanya, Mila, Lena, Ada, Edith, Mabel, Agnes, Beatrice, Cora,
Eliza, Fiona, Gemma, Laura, Megan, Naomi, Paige, Rachel, Tessa, Uma, Wendy, Yara, Zelda, Bianca,
Carla, Diana, Erin, Gina, Helen, Jenny, Kira, Lara, Maria, Nadia, Ruth, Susan, Tara, Vicky,
Willa, Harriet, Josephine, Louisa, Miriam, Rebecca, Sylvia, Thea, Ursula, Wanda
"""
_MALE = """
Tom, Leo, Max, Ben, Jack, Noah, Liam, Oliver, Elijah, James, Lucas, Henry, Theo, Oscar, Arthur,
Felix, Hugo, Jasper, Finn, Owen, Ethan, Mason, Caleb, Isaac, Adam, Daniel, David, Samuel, Joseph,
Peter, Paul, Luke, John, Matthew, Andrew, Simon, Victor, Hector, Marco, Mateo, Diego, Pablo,
Carlos, Javier, Luis, Miguel, Rafael, Bruno, Tiago, Omar, Yusuf, Karim, Tariq, Hassan, Ali, Amir,
Rami, Ravi, Arjun, Rohan, Vikram, Aditya, Dev, Sanjay, Kenji, Hiro, Takeshi, Ren, Jun, Wei, Chen,
Kofi, Kwame, Tunde, Chidi, Emeka, Jabari, Tendai, Ivan, Dmitri, Pavel, Nikolai, Boris, Igor,
Anton, Erik, Lars, Sven, Nils, Axel, Otto, Karl, Hans, Jonas, Emil, Anders, Magnus, Rupert, Alfie,
Archie, Harry, George, Freddie, Louis, Edward, Gus, Hank, Ike, Jude, Kyle, Lewis, Milo, Ned,
Ollie, Percy, Reggie, Rufus, Seth, Toby, Vince, Wes, Zack, Abe, Cole, Dean, Eli, Fred, Glen, Ian,
Joel, Kurt, Lenny, Nate, Rex, Roy, Ted, Walt, Zane, Colin, Dylan, Evan, Gavin, Jason, Kevin,
Martin, Neil, Patrick, Ryan, Steven, Tyler, Wade, Logan, Desmond, Ezra, Gideon, Ibrahim
"""
_NEUTRAL = """
Alex, Sam, Robin, Jordan, Taylor, Casey, Riley, Morgan, Jamie, Avery, Quinn, Kai, Rowan, Sage,
River, Skyler, Remy, Jules, Eden, Emery, Finley, Harley, Hayden, Jesse, Kendall, Parker, Peyton,
Reese, Tatum, Wren, Ari, Blair, Charlie, Frankie, Kiran, Noel, Toni, Rory, Sasha, Nico, Elliot
"""
NAMES: tuple[tuple[str, str], ...] = tuple(
    (name, pronoun)
    for block, pronoun in ((_FEMALE, "she"), (_MALE, "he"), (_NEUTRAL, "they"))
    for name in _entries(block)
)

# --------------------------------------------------------------------------- nouns
ANIMALS = _nouns("""
dog, cat, bird, cow, horse, pig, sheep/sheep, goat, duck, goose/geese, chicken, hen, rooster,
rabbit, mouse/mice, rat, fox, wolf/wolves, bear, deer/deer, owl, frog, toad, turtle, snake,
lizard, fish/fish, whale, dolphin, shark, octopus/octopuses, crab, snail, bee, ant, butterfly,
spider, beetle, worm, squirrel, hedgehog, badger, otter, beaver, raccoon, skunk, bat, lion,
tiger, elephant, giraffe, zebra, monkey, gorilla, kangaroo, koala, panda, penguin, seal, parrot,
crow, sparrow, pigeon, swan, eagle, hawk, puppy, kitten, calf/calves, lamb, pony, donkey, mule,
camel, llama, ox/oxen, bull, hamster, caterpillar, moth, flamingo, hippo, rhino, cheetah,
leopard, wombat, peacock, pelican, toucan, walrus, yak, buffalo/buffaloes, mosquito/mosquitoes,
cricket, chipmunk, mole, newt, tortoise, ferret, gerbil, puffin, heron, stork, lobster,
moose/moose, salmon/salmon, trout/trout, shrimp/shrimp, bison/bison, jaguar, panther, vulture,
magpie, lark, robin, finch, canary, mammoth, reindeer/reindeer, coyote, hyena, meerkat, sloth,
armadillo, porcupine, lemur, baboon, chimpanzee, antelope, gazelle, ostrich/ostriches, emu,
albatross/albatrosses, orca, squid/squid, oyster, clam, slug, wasp, hornet, flea, termite
""")
PEOPLE_NEUTRAL = _nouns("""
child/children, baby, kid, friend, teacher, doctor, nurse, farmer, chef, pilot, artist,
musician, student, neighbor, cousin, giant, robot, astronaut, clown, mayor, guard, firefighter,
gardener, librarian, dentist, mechanic, plumber, sailor, captain, pirate, knight, goblin, troll,
fairy, elf/elves, traveler, scientist, inventor, explorer, shepherd, carpenter, tailor, potter,
miner, merchant, ranger, keeper, poet, professor, soldier, acrobat, magician, detective, vet,
zookeeper, shopkeeper, beekeeper, lifeguard, person/people
""")
PEOPLE_MALE = _nouns("""
boy, man/men, king, prince, brother, father, grandfather, uncle, wizard, nephew, husband, son
""")
PEOPLE_FEMALE = _nouns("""
girl, woman/women, queen, princess, sister, mother, grandmother, aunt, witch, niece, wife/wives,
daughter
""")
OBJECTS = _nouns("""
ball, box, key, book, cup, hat, shoe, sock, coin, stone, shell, feather, flower, leaf/leaves,
stick, pencil, crayon, marble, button, ribbon, kite, toy, doll, block, card, letter, map, bell,
candle, lamp, basket, bag, bottle, jar, bowl, plate, spoon, fork, knife/knives, brush, comb,
mirror, clock, necklace, bracelet, scarf/scarves, glove, mitten, boot, umbrella, blanket, pillow,
towel, rope, net, bucket, shovel, rake, hammer, wheel, drum, flute, guitar, violin, piano,
trumpet, balloon, puzzle, game, gift, ticket, envelope, photo, picture, poster, sticker, badge,
flag, crown, sword, shield, wand, lantern, torch, compass, telescope, magnet, battery, rock,
pebble, acorn, seed, nut, jewel, diamond, crystal, globe, wallet, purse, tray, kettle, pan, pot,
vase, boat, car, truck, train, bus, bicycle, wagon, sled, scooter, helmet, jacket, coat, dress,
shirt, skirt, sweater, belt, apron, cap, mask, bead, chain, lock, tool, chair, stool, table,
desk, bench, bed, shelf/shelves, cushion, rug, quilt, curtain, ladder, tent, note, poem, story,
trophy, medal, carton, parcel, package, postcard, bone, horn, marker, eraser, ruler,
glue, paintbrush, ring, spade, sieve, funnel, ladle, napkin, candlestick
""")
FOODS = _nouns("""
apple, banana, pear, peach, plum, cherry, grape, lemon, lime, mango/mangoes, melon, carrot,
potato/potatoes, tomato/tomatoes, onion, pumpkin, muffin, candy, lollipop, pizza, bun, biscuit,
donut, strawberry, blueberry, coconut, pineapple, cookie, cake, pie, sandwich, egg, berry,
cucumber, radish, turnip, pepper, apricot, kiwi, fig, date, olive, pretzel, cracker, waffle,
taco, dumpling, noodle, bagel, croissant, sausage, meatball, tart, walnut, peanut, almond,
avocado
""")
PLACES = _nouns("""
park, forest, garden, kitchen, farm, beach, village, town, city, castle, school, library,
market, harbor, island, meadow, valley, mountain, river, lake, cave, desert, jungle, zoo,
museum, bakery, shop, playground, backyard, orchard, field, pond, hill, barn, attic, cellar,
station, airport, hospital, cottage, palace, tower, swamp, marsh, canyon, prairie, campsite,
circus, theater, classroom, bedroom, hallway, garage, greenhouse, workshop, studio, stadium,
pier, dock, vineyard, bookshop, treehouse, lighthouse, farmhouse, sandbox
""")
LANDMARKS = _nouns("""
house, tree, door, window, wall, gate, fence, road, path, bridge, shed, statue, fountain,
stream, street, corner, hedge, bush, pole, post, tunnel, cliff, stump, log, boulder, puddle,
nest, hut, cabin, chimney, roof, porch, staircase, mailbox, signpost, haystack, windmill,
waterfall, bonfire, campfire, rooftop, doorway, sidewalk
""")
BODY_PARTS = _nouns("""
tail, ear, nose, paw, wing, eye, foot/feet, tooth/teeth, whisker, beak, fin, mane, claw,
hoof/hooves, leg, neck, head
""")
TIMES = _nouns(
    "time, morning, afternoon, evening, night, day, week, summer, winter, autumn, weekend, year, hour"
)
OTHER_NOUNS = _nouns("end")  # fixed phrases only (*in the end*)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEATHER = _nouns("sun, moon, wind, cloud, star, sky, storm, breeze, rainbow, puddle")
# Closed compounds: the plural inflects the head, so snow+man -> snowmen, book+shelf -> bookshelves.
COMPOUNDS = _compounds("""
snow+man, fisher+man, post+man, milk+man, fire+man, snow+flake, rain+coat, sun+flower, tea+pot,
tea+cup, book+shelf, book+case, tooth+brush, hair+brush, bird+house, dog+house, sand+castle,
sea+shell, foot+ball, snow+ball, basket+ball, base+ball, cup+board, door+bell, door+knob,
lady+bug, dragon+fly, fire+fly, grass+hopper, wood+pecker, skate+board, back+pack, note+book,
suit+case, tool+box, sun+beam, moon+beam, horse+shoe, foot+print, finger+print, book+mark,
black+board, sea+gull, water+melon, blue+berry, rasp+berry, ear+ring, key+hole, sail+boat,
row+boat, house+boat, fire+place, rain+drop, dew+drop, tear+drop, pine+cone, milk+shake,
flower+pot, flower+bed, bird+cage, bird+bath, match+box, lunch+box, tooth+pick, hair+pin,
pocket+knife, pen+knife, wrist+watch, cow+boy, cow+girl, grand+child, school+child, were+wolf,
book+worm, earth+worm, silk+worm, dor+mouse, gold+fish, cat+fish, sword+fish, star+fish,
jelly+fish, sun+hat, bath+tub, sun+set, sun+rise, head+band, arm+chair, wheel+barrow,
scare+crow, hand+bag, bean+bag, snow+plow, pan+cake, cup+cake, bed+post, lamp+post, gate+post,
foot+stool, life+boat, air+plane, space+ship, steam+boat, rail+way, play+house, dog+sled
""")

# --------------------------------------------------------------------------- verbs
# Animate subjects, no object. "*" doubles the last consonant; a second word is an irregular past.
VERBS_INTRANSITIVE = _verbs("""
run* ran @, swim* swam @, sleep slept @, jump @, laugh, smile, sing sang @, dance @, play @,
walk @, climb @, skip*, hop*, wave, nod*, cry, shout, whisper, yawn, sneeze, giggle, wait @,
rest, sit* sat, stand stood, hide hid, hurry, wander @, listen @, blink, shiver, wink, clap*,
skate @, ski @, float, fly flew, crawl, march, stomp, tiptoe, snore @, sigh, cough, grin*,
frown, blush, shrug*, stretch, breathe, hum*, whistle, chatter, wobble, tumble, arrive,
return, travel @, relax, explore @, hike @, paddle, camp @, bounce, splash, cheer, kneel knelt,
spin* spun, wake woke, dream @, work @, rush, glide, slide slid, stumble, sneak, pause, squeal,
twirl, bow, settle, shuffle, trot*, gallop, scurry, dash, leap, roam, sob*, weep wept, pray,
shine shone, sparkle, drift, sway, grow grew, fall fell, swing swung, sink sank, bathe,
nap*, snooze, puff, pant, jog* @, sprint @, sail, row, dive dived @, perch, hover
""")
# Animal sounds, keyed by the animal that makes them.
_SOUND_MAKERS = words("""
dog cat cow duck owl lion horse sheep pig bee snake frog bird wolf mouse donkey goose hen monkey
parrot
""")
_SOUNDS = _verbs("""
bark, purr, moo, quack, hoot, roar, neigh, bleat, oink, buzz, hiss, croak, chirp, howl, squeak,
bray, honk, cluck, screech, squawk
""")
ANIMAL_SOUNDS: dict[str, Verb] = {
    animal: verb for animal, (verb, _, _) in zip(_SOUND_MAKERS, _SOUNDS, strict=True)
}

# Transitive verbs, grouped by what they can sensibly take as an object.
VERBS_OBJECT = _verbs("""
find found, carry, hold held, drop*, lift, push, pull, throw threw, catch caught, keep kept,
buy bought @, sell sold @, open ^, close, wash ^, paint @ ^, fix, bring brought,
take took, share, pack ^, wrap* ^, fold ^, polish, sort, stack ^, hang hung, pick, borrow @,
lend lent, trade @, hide hid, spot*, grab*, toss, drag*, check ^, count ^, measure, weigh,
tie ^, fill ^, load ^, shake shook, decorate ^, juggle @, collect, examine, admire @,
choose chose, hug*, touch, kick, steal stole, return, deliver, mend, drop*, lose lost,
want, need, like, love, see saw, notice, spin* spun, clutch, squeeze, wipe, arrange ^, bury,
discover, show, label, trace, swap*, balance, scrub*, rinse, sweep swept
""")
VERBS_FOOD = _verbs("""
eat ate @, bake @, cook, slice, peel, taste, chop*, mix, eat ate, munch, nibble, crunch, share,
wash, pick, buy bought, grow grew @, plant ^, roast, toast, squash, serve, heat ^, stir*
""")
VERBS_ANIMAL = _verbs("""
feed fed, pat*, chase, follow @, watch, hug*, tickle, groom, rescue @, ride rode @, call, visit,
photograph, draw drew, name, greet, catch caught, carry
""")
VERBS_TEXT = _verbs("read read @ ^, write wrote @ ^, copy, sign, fold, tear tore, send sent")
VERBS_BUILD = _verbs("build built @ ^, make made @, draw drew, sketch, design @, carve @, knit* @")
VERBS_PERSON = _verbs("""
greet, thank, help @, call, meet met, invite, visit, follow, hug*, tickle, teach taught @,
tell told ^, ask, answer, find found, join, lead led @, surprise, cheer, warn, remind, wake woke
""")
VERBS_SPEECH = _verbs("say said, ask, reply, shout, whisper, call, cry, explain, announce, add")
# Verbs that only appear in fixed frames (*felt proud*, *went home*, *put it in the box*).
VERBS_FRAME = _verbs(
    "feel felt, look, seem, become became, stay, go went, live, put* put, give gave, pass, hand"
)
VERBS_MOTION = _verbs("""
walk, run* ran, hurry, wander, march, skip*, race, stroll, rush, hop*, tiptoe, climb, drive drove @,
ride rode, cycle, travel, sail, paddle, jog*, dash, sprint
""")

# --------------------------------------------------------------------------- adjectives
SIZES = _adjectives("""
big*<, small<, tiny<, huge, large<, little, tall<, short<, long<, wide<, narrow<, thick<, thin*<,
round, flat*<, deep<, shallow<, high<, low<, heavy<~, light<~, enormous~, gigantic, miniature
""")
COLORS = _adjectives("""
red, blue, green, yellow, orange, purple, pink, brown, black, white, gray, golden, silver,
crimson, scarlet, turquoise, beige, navy, lilac, bronze, copper
""")
FEELINGS = _adjectives("""
happy<~!%, sad*<~%, glad, angry<~, calm<~%, proud<~, shy, curious~, nervous~%, anxious~,
eager~%, tired, sleepy<~, hungry<~, thirsty, scared, sorry, ready, excited~, cheerful~%,
grumpy<~, lonely<%, bored, brave<~, afraid!, worried, puzzled, hopeful~, jealous~, thankful~,
joyful~, upset, amazed, delighted, relieved, confused, sure!, certain~!, aware!,
patient~, content
""")
PERSONALITY = _adjectives("""
kind<~!%, friendly<!, clever~%, quiet<~%, loud<~, gentle<~%, busy<~, lazy<~%, careful~,
careless~%, helpful~%, playful~%, graceful~, polite~, rude~%, honest~, fair<~!%, lucky<~!, wise<~,
silly<%, funny<, smart<, young<, strong<, weak<%, rich<, bold<~, fierce<~, wild<, tame, clumsy<~%,
mighty<, humble, loyal~, swift<~, slow<~, quick<~, noisy<~, messy<, neat<~%, tidy<~!%, cute<,
fast, tough<, dreamy, famous, royal
""")
TEXTURES = _adjectives("fluffy<, furry, shaggy, silky, fuzzy, speckled, striped, smooth<~, rough<~")
CONDITIONS = _adjectives("""
soft<~%, hard<, sharp<~, dull<, shiny<, dusty<, clean<, dirty<, wet*<, dry<, new<, empty, full,
broken, sticky<, bumpy, wobbly, sparkly, glittery, bouncy, hollow, rusty, creaky, glossy, lumpy,
slippery, sturdy, wooden, plastic, spotless, smelly<, safe<~!, steady<~, easy<~
""")
AESTHETIC = _adjectives("""
beautiful~, wonderful~, colorful, magical~, mysterious~, secret~, special, favorite, perfect~,
important, precious, rare, fancy<, plain<, simple<~, strange~, odd, grand<, great<,
good:better:best, bad:worse:worst~, nice<~, fine, pretty<, ugly<, usual~!, true~, ancient,
modern, old<
""")
WEATHERLY = _adjectives("""
sunny<, rainy<, windy<, snowy<, cloudy<, foggy<, stormy, icy, frosty, chilly, cozy<, peaceful~,
sandy, rocky, muddy<, soggy, silent~, bright<~%, dark<%, hot*<, cold<~%, warm<~, cool<, pale<
""")
TASTES = _adjectives("""
fresh<, ripe<, sweet<~%, sour, salty, spicy, crunchy, juicy<, tasty<, delicious, crisp<
""")
# Only their adverbs and nouns are used (*rapidly*, *suddenness*).
MANNER_ONLY = _adjectives("rapid~, sudden~%")
ADJECTIVES = (
    SIZES
    + COLORS
    + FEELINGS
    + PERSONALITY
    + TEXTURES
    + CONDITIONS
    + AESTHETIC
    + WEATHERLY
    + TASTES
    + MANNER_ONLY
)

# --------------------------------------------------------------------------- closed classes
ADVERBS_PLAIN = _entries("""
soon, later, together, away, home, again, always, never, often, sometimes, today, yesterday,
tomorrow, now, finally, maybe, everywhere, somewhere, nearby, afterwards, once, well, almost, still,
already, quite, rather, suddenly, outside, upstairs, downstairs, twice, forward, ahead
""")
NUMBER_WORDS = words("""
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
sixteen seventeen eighteen nineteen twenty
""")
ORDINALS = words("first second third fourth fifth sixth seventh eighth ninth tenth last")
FUNCTION_WORDS = _entries("""
the, a, an, and, but, or, so, then, because, when, while, after, before, of, in, on, at, to,
from, with, near, behind, beneath, under, above, beside, by, into, onto, for, over, across, around,
past, between, through, along, toward, inside, without, about, up, down, out, off, back, that,
who, which, this, these, those, there, it, he, she, they, him, her, them, his, their, its, I,
you, we, me, my, your, our, us, is, are, was, were, be, been, has, have, had, do, does, did,
not, no, yes, very, too, also, all, every, each, some, many, more, most, much, than, can, could,
will, would, let, what, where, how, why, if, just, only, as, s, everyone, everybody, something,
nothing, upon, other, another, both, next, any, oh, wow, here, own, till, until, please,
hello, goodbye
""")


# --------------------------------------------------------------------------- categories
def _verb_records() -> list[Verb]:
    groups = (
        VERBS_INTRANSITIVE,
        VERBS_OBJECT,
        VERBS_FOOD,
        VERBS_ANIMAL,
        VERBS_TEXT,
        VERBS_BUILD,
        VERBS_PERSON,
        VERBS_SPEECH,
        VERBS_MOTION,
        VERBS_FRAME,
    )
    return [verb for group in groups for verb, _, _ in group] + list(ANIMAL_SOUNDS.values())


def agent_nouns() -> tuple[Noun, ...]:
    """Agent nouns of every verb flagged ``@`` (*baker*, *swimmer*), deduplicated, in order."""
    seen: dict[str, Noun] = {}
    groups = (VERBS_INTRANSITIVE, VERBS_OBJECT, VERBS_FOOD, VERBS_ANIMAL, VERBS_TEXT)
    for group in (*groups, VERBS_BUILD, VERBS_PERSON, VERBS_MOTION):
        for verb, flags, double in group:
            if "@" in flags:
                noun = agent_noun(verb.base, double)
                seen.setdefault(noun, Noun(noun, pluralize(noun)))
    return tuple(seen.values())


def re_verb(verb: Verb) -> Verb:
    """*paint* -> *repaint, repaints, repainted, repainting* (prefixing keeps the inflection)."""
    return Verb(*("re" + form for form in verb.forms))


def re_verbs() -> tuple[Verb, ...]:
    """``re-`` verbs of every verb flagged ``^``: *repaint*, *rebuilt*, *retold*."""
    seen: dict[str, Verb] = {}
    for group in (VERBS_OBJECT, VERBS_FOOD, VERBS_TEXT, VERBS_BUILD, VERBS_PERSON):
        for verb, flags, _ in group:
            if "^" in flags:
                seen.setdefault(verb.base, re_verb(verb))
    return tuple(seen.values())


def noun_records() -> tuple[Noun, ...]:
    """Every countable noun the stories can use, including agent nouns and compounds."""
    return (
        ANIMALS
        + PEOPLE_NEUTRAL
        + PEOPLE_MALE
        + PEOPLE_FEMALE
        + OBJECTS
        + FOODS
        + PLACES
        + LANDMARKS
        + BODY_PARTS
        + TIMES
        + WEATHER
        + OTHER_NOUNS
        + COMPOUNDS
        + agent_nouns()
    )


def _claim(categories: dict[str, str], word: str, category: str) -> None:
    """Record ``word`` as ``category``; raise if another list already claimed it.

    Words that can open a sentence (function words, numbers, verbs, adjectives, adverbs) are
    claimed capitalised too. Nouns never open a sentence (a determiner always comes first), so
    the animal *robin* and the name *Robin* stay distinct forms.
    """
    forms = [word]
    if category not in ("name", "noun") and word[:1].islower():
        forms.append(word[:1].upper() + word[1:])
    for form in forms:
        previous = categories.setdefault(form, category)
        if previous != category:
            raise ValueError(f"word {form!r} is both a {previous} and a {category}")


@lru_cache(maxsize=1)
def build_categories() -> dict[str, str]:
    """Map each surface form to its part of speech; raises if two lists claim the same form.

    A word two lists claim (*fly* the verb and *fly* the noun) is a curation error: the lists
    avoid such words so every token of the corpus has one unambiguous label.
    """
    categories: dict[str, str] = {}
    for word in FUNCTION_WORDS:
        _claim(categories, word, "function")
    for word in NUMBER_WORDS + ORDINALS + [str(n) for n in range(1000)]:
        _claim(categories, word, "number")
    for name, _ in NAMES:
        _claim(categories, name, "name")
    for noun in noun_records():
        _claim(categories, noun.singular, "noun")
        _claim(categories, noun.plural, "noun")
    for day in DAYS:
        _claim(categories, day, "noun")
    for verb in _verb_records() + list(re_verbs()):
        for form in verb.forms:
            _claim(categories, form, "verb")
    for adjective in ADJECTIVES:
        for form in (adjective.base, adjective.comparative, adjective.superlative):
            if form:
                _claim(categories, form, "adjective")
        if adjective.negated:
            _claim(categories, adjective.negated, "adjective")
        if adjective.ness:
            _claim(categories, adjective.ness, "noun")
            if adjective.negated:
                _claim(categories, "un" + adjective.ness, "noun")
        if adjective.adverb:
            _claim(categories, adjective.adverb, "adverb")
            if adjective.negated:
                _claim(categories, "un" + adjective.adverb, "adverb")
    for adverb in ADVERBS_PLAIN:
        _claim(categories, adverb, "adverb")
    return categories


def noun_number(word: str) -> str | None:
    """``"sg"``/``"pl"`` for a noun form whose number is visible, else None (*sheep*, unknown)."""
    return _noun_numbers().get(word)


@lru_cache(maxsize=1)
def _noun_numbers() -> dict[str, str]:
    numbers: dict[str, str] = {}
    for noun in noun_records():
        if noun.invariant:
            continue
        numbers[noun.singular] = "sg"
        numbers[noun.plural] = "pl"
    return numbers


def verb_number(word: str) -> str | None:
    """``"sg"``/``"pl"`` for a present-tense verb or auxiliary form that shows agreement."""
    return _verb_numbers().get(word)


@lru_cache(maxsize=1)
def _verb_numbers() -> dict[str, str]:
    numbers = {"is": "sg", "are": "pl", "was": "sg", "were": "pl", "has": "sg", "have": "pl"}
    numbers.update({"does": "sg", "do": "pl"})
    for verb in _verb_records() + list(re_verbs()):
        if verb.s != verb.base:
            numbers.setdefault(verb.s, "sg")
            numbers.setdefault(verb.base, "pl")
    return numbers
