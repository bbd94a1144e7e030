"""The sentences of the turn-taking corpus (:mod:`bench.corpus_specs` says who speaks them).

Each :class:`Row` is a sentence with ``|`` where a pause goes and the kind of word before it
(``place``), or a finished sentence and the kind of word it ends on. ``split`` says whether
the turn detector was tuned on it (``tune``) or not (``heldout``): the original corpus, the
sentences of the first line of each group below, is ``tune``; about half of the new ones
are held out, and so is every sentence in German, Spanish and French.

Places before a pause: ``article``, ``preposition``, ``conjunction``, ``before_number``,
``comma``, ``mid_number``, ``list`` (the original corpus: where a word list says a sentence
is open) and ``verb``, ``noun``, ``pronoun``, ``adverb``, ``auxiliary``, ``adjective``,
``filler`` (a hesitation: "um", "uh"), where a word list cannot tell. Some of these leave a
prefix that is itself a sentence ("I would like to order | a large pizza"): only the sound
and the pause tell them apart.

Finished sentences end on a ``noun``, ``verb``, ``pronoun``, ``adverb``, ``adjective``,
``particle`` ("turn it off"), ``stranded_preposition`` ("what I was looking for"),
``auxiliary`` ("yes, I can"), ``number`` or a ``question``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["complete", "mid_sentence", "between_sentences"]


@dataclass(frozen=True)
class Row:
    category: Kind
    place: str
    text: str
    pauses: tuple[float, ...] = ()
    split: Literal["tune", "heldout"] = "tune"
    language: str = "en"


def _complete(rows: list[tuple[str, str]], split: Literal["tune", "heldout"]) -> list[Row]:
    return [Row("complete", place, text, (), split) for place, text in rows]


def _mid(
    rows: list[tuple[str, tuple[float, ...], str]], split: Literal["tune", "heldout"]
) -> list[Row]:
    return [Row("mid_sentence", place, text, pauses, split) for place, pauses, text in rows]


COMPLETE: tuple[Row, ...] = (
    *_complete(
        [
            ("question", "What time does the pharmacy close tonight?"),
            ("noun", "Please set a timer for ten minutes."),
            ("question", "Can you read me my new messages?"),
            ("adverb", "I would like to book a table for two people tonight."),
            ("question", "How long does it take to drive to the airport?"),
            ("noun", "Remind me to call the doctor tomorrow morning."),
            ("question", "What is the weather going to be like this weekend?"),
            ("adverb", "Turn the heating down a little."),
            ("question", "Where is the nearest train station?"),
            ("noun", "Play some quiet music in the living room."),
            ("question", "Did anyone call while I was out?"),
            ("number", "Cancel my meeting at three o'clock."),
            ("question", "How do I get to the city library from here?"),
            ("noun", "Send a message to Tom saying I am on my way."),
            # new: finished sentences that end on every kind of word
            ("stranded_preposition", "That is exactly what I was looking for."),
            ("pronoun", "Could you please call her."),
            ("verb", "I really hope it works."),
            ("particle", "Please turn the lights off."),
            ("auxiliary", "Yes, I think I can."),
            ("adjective", "The soup is still too cold."),
        ],
        "tune",
    ),
    *_complete(
        [
            ("verb", "I just want to know what it is."),
            ("stranded_preposition", "Who were you talking to?"),
            ("pronoun", "I am not sure I need it."),
            ("adverb", "We will be there soon."),
            ("adjective", "That sounds great."),
            ("particle", "Can you pick me up?"),
            ("auxiliary", "I would help if I could."),
            ("number", "Wake me up at seven."),
            ("noun", "My brother lost his wallet at the station."),
            ("verb", "Tell me when they arrive."),
        ],
        "heldout",
    ),
)

MID_SENTENCE: tuple[Row, ...] = (
    *_mid(
        [
            ("article", (0.6,), "I would like to book a | table for two"),
            ("article", (0.7,), "Can you find me a | cheap hotel near the station"),
            ("article", (0.3,), "Please move the | dentist appointment to Friday"),
            ("preposition", (0.7,), "Can you send it to | my office"),
            ("preposition", (0.45,), "Put the meeting notes in | the shared folder"),
            ("preposition", (0.9,), "I left my keys at | my mother's house"),
            ("conjunction", (0.6,), "I need milk and | some bread"),
            ("conjunction", (0.8,), "We could walk to the park or | stay at home"),
            ("conjunction", (0.2,), "I called the bank but | nobody answered"),
            ("before_number", (0.7,), "I need a table for | two people"),
            ("before_number", (0.6,), "Set an alarm for | six thirty tomorrow"),
            ("before_number", (0.45,), "Turn the heating up to | twenty one degrees"),
            ("comma", (0.6,), "Well, | I think so"),
            ("comma", (0.7,), "Actually, | make it three o'clock"),
            ("comma", (0.9,), "If it rains tomorrow, | cancel the picnic"),
            (
                "mid_number",
                (0.45, 0.2),
                "My number is five five five | one two three | four five six seven",
            ),
            ("mid_number", (0.8,), "It came to one hundred and | forty two dollars"),
            ("list", (0.7, 0.3), "Add eggs, | milk, | and coffee to the list"),
            # new: pauses after every kind of word
            ("verb", (0.6,), "Can you remind | my brother about dinner"),
            ("verb", (0.7,), "I would like to order | a large pizza"),
            ("noun", (0.6,), "The meeting with the client | went really well"),
            ("noun", (0.5,), "I left the report | on your desk"),
            ("pronoun", (0.7,), "Could you send them | the new schedule"),
            ("pronoun", (0.5,), "Please remind me | to water the plants"),
            ("adverb", (0.6,), "We should probably | leave before the rain"),
            ("adverb", (0.7,), "She usually | takes the bus to work"),
            ("auxiliary", (0.5,), "The package has | not arrived yet"),
            ("auxiliary", (0.7,), "I will | call you back later"),
            ("adjective", (0.6,), "I need a new | phone charger"),
            ("filler", (0.7,), "I need, uh, | two tickets for tonight"),
        ],
        "tune",
    ),
    *_mid(
        [
            ("verb", (0.5,), "Please tell | the driver to wait outside"),
            ("verb", (0.7,), "I forgot to bring | my umbrella today"),
            ("noun", (0.7,), "My appointment on Tuesday | has been moved"),
            ("noun", (0.5,), "Send the invoice | to the accounting team"),
            ("pronoun", (0.6,), "Tell him | that I will be late"),
            ("pronoun", (0.7,), "I want to ask her | about the weekend"),
            ("adverb", (0.5,), "Can you also | add bread to the list"),
            ("adverb", (0.7,), "I almost | forgot my keys"),
            ("auxiliary", (0.6,), "My flight might | be delayed tonight"),
            ("auxiliary", (0.7,), "We have | already paid the bill"),
            ("adjective", (0.7,), "Find me a cheap | hotel in Paris"),
            ("filler", (0.6,), "Can you, um, | turn the music down"),
            ("preposition", (0.6,), "The keys are under | the blue mat"),
            ("article", (0.5,), "I just bought a | new bicycle"),
            ("comma", (0.7,), "When you get home, | call me"),
            ("conjunction", (0.7,), "I wanted to call you but | my phone died"),
        ],
        "heldout",
    ),
)

BETWEEN_SENTENCES: tuple[Row, ...] = tuple(
    Row("between_sentences", "sentence_end", text, (pause,), "tune")
    for pause, text in (
        (0.2, "I need a taxi. | It is for the airport."),
        (0.3, "The meeting went well. | Can you send the notes to Anna?"),
        (0.45, "What is the weather like tomorrow? | I want to go hiking."),
        (0.6, "That is perfect. | Please book a taxi as well."),
        (0.7, "I lost my wallet. | What should I do?"),
        (0.8, "Call my sister. | Tell her I am late."),
        (0.9, "The printer is not working. | It keeps showing an error."),
        (0.2, "I finished the report. | Should I send it to the whole team?"),
        (0.3, "Turn off the kitchen lights. | Leave the hallway on."),
        (0.45, "My flight was cancelled. | I need another one tonight."),
        (0.6, "Is the library open on Sunday? | I have books to return."),
        (0.7, "Add eggs to the shopping list. | We are out of coffee too."),
        (0.8, "I am running late. | Start the meeting without me."),
        (0.9, "That sounds good to me. | Let us do it on Friday."),
    )
)


def _lang(
    language: str,
    complete: list[tuple[str, str]],
    mid: list[tuple[str, tuple[float, ...], str]],
) -> list[Row]:
    return [Row("complete", p, t, (), "heldout", language) for p, t in complete] + [
        Row("mid_sentence", p, t, ps, "heldout", language) for p, ps, t in mid
    ]


INTERNATIONAL: tuple[Row, ...] = (
    *_lang(
        "de",
        [
            ("question", "Wie spät ist es jetzt?"),
            ("particle", "Bitte mach das Licht im Flur aus."),
            ("adverb", "Ich komme gleich."),
            ("pronoun", "Kannst du mir helfen?"),
            ("verb", "Das ist genau das, was ich gesucht habe."),
            ("number", "Der Zug fährt um sieben."),
        ],
        [
            ("article", (0.5,), "Ich möchte einen | Tisch für zwei Personen reservieren"),
            ("pronoun", (0.5,), "Kannst du mir | die Datei schicken"),
            ("noun", (0.5,), "Das Treffen mit dem Kunden | war sehr gut"),
            ("adverb", (0.7,), "Wir sollten morgen | früher losfahren"),
            ("auxiliary", (0.5,), "Ich habe | meinen Schlüssel vergessen"),
            ("conjunction", (0.7,), "Ruf bitte meine Schwester an und | sag ihr Bescheid"),
            ("filler", (0.5,), "Ich brauche, äh, | zwei Karten für heute Abend"),
            ("preposition", (0.3,), "Schick die Rechnung an | die Buchhaltung"),
        ],
    ),
    *_lang(
        "es",
        [
            ("question", "¿Qué hora es?"),
            ("noun", "Apaga la luz de la cocina, por favor."),
            ("noun", "Llego en diez minutos."),
            ("verb", "¿Me puedes ayudar?"),
            ("verb", "Eso es justo lo que buscaba."),
            ("number", "El tren sale a las siete."),
        ],
        [
            ("article", (0.5,), "Quiero reservar una | mesa para dos personas"),
            ("verb", (0.5,), "Puedes enviarme | el archivo hoy"),
            ("noun", (0.5,), "La reunión con el cliente | fue muy bien"),
            ("auxiliary", (0.7,), "Mañana deberíamos | salir más temprano"),
            ("conjunction", (0.5,), "Necesito leche y | un poco de pan"),
            ("preposition", (0.7,), "Envía la factura a | contabilidad"),
            ("filler", (0.5,), "Necesito, eh, | dos entradas para esta noche"),
            ("adverb", (0.3,), "Mi hermana siempre | llega tarde"),
        ],
    ),
    *_lang(
        "fr",
        [
            ("question", "Quelle heure est-il ?"),
            ("noun", "Éteins la lumière de la cuisine, s'il te plaît."),
            ("noun", "J'arrive dans dix minutes."),
            ("verb", "Tu peux m'aider ?"),
            ("verb", "C'est exactement ce que je cherchais."),
            ("number", "Le train part à sept heures."),
        ],
        [
            ("article", (0.5,), "Je voudrais réserver une | table pour deux personnes"),
            ("verb", (0.5,), "Tu peux m'envoyer | le fichier aujourd'hui"),
            ("noun", (0.5,), "La réunion avec le client | s'est très bien passée"),
            ("auxiliary", (0.7,), "Nous devrions | partir plus tôt demain"),
            ("conjunction", (0.5,), "J'ai besoin de lait et | d'un peu de pain"),
            ("preposition", (0.7,), "Envoie la facture à | la comptabilité"),
            ("filler", (0.5,), "J'ai besoin, euh, | de deux billets pour ce soir"),
            ("adverb", (0.3,), "Ma sœur arrive toujours | en retard"),
        ],
    ),
)


__all__ = ["BETWEEN_SENTENCES", "COMPLETE", "INTERNATIONAL", "MID_SENTENCE", "Row"]
