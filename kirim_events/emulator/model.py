"""The emulated world's vocabulary: its config, entities, events and bundles (pure data)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime

from kirim_events.errors import ConfigError

__all__ = [
    "DEFAULT_START",
    "INBOUND_TEXTS",
    "META_ERRORS",
    "NAMES",
    "SURNAMES",
    "Bundle",
    "Contact",
    "Phone",
    "WorldConfig",
    "WorldEvent",
]

DEFAULT_START = int(datetime(2026, 5, 1, tzinfo=UTC).timestamp())

# Meta error codes from kirim-api.md §6.1 (Kirim's /guides/failed-sends/ table), with titles.
META_ERRORS: tuple[tuple[int, str, float], ...] = (
    (131047, "Re-engagement message", 0.30),
    (131026, "Message undeliverable", 0.20),
    (1013, "User is blocked", 0.10),
    (1006, "Recipient not on WhatsApp", 0.08),
    (132015, "Template is paused", 0.08),
    (132016, "Template is disabled", 0.06),
    (132000, "Number of parameters does not match the expected number of params", 0.08),
    (132001, "Template does not exist", 0.05),
    (131053, "Media upload error", 0.05),
)

INBOUND_TEXTS = (
    "Halo, pesanan saya belum sampai",
    "Apakah toko buka hari ini?",
    "Saya mau tanya soal pengembalian dana",
    "Terima kasih!",
    "Hi, can I change my delivery address?",
    "Berapa ongkos kirim ke Bandung?",
)
NAMES = ("Siti", "Budi", "Ayu", "Rizky", "Dewi", "Agus", "Putri", "Fajar", "Nina", "Joko")
SURNAMES = ("Rahma", "Santoso", "Wijaya", "Pratama", "Lestari", "Hidayat", "Kusuma")


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """Knobs of the simulated organisation. Rates are probabilities in [0, 1].

    ``kirim_block`` adds Kirim's optional ``kirim`` object (``conversation_id``,
    ``contact_id``) to Meta bodies so analytics can link messages to conversations; off by
    default, as kirim-api.md §4.2 says (the emulator adds it "only when asked");
    ``third_shape_rate`` renders that share of single-message bodies in the third body shape.
    """

    phone_numbers: int = 2
    agents: int = 8
    max_contacts: int = 2000
    session_interval: float = 30.0
    outbound_share: float = 0.3
    failure_rate: float = 0.05
    delivered_rate: float = 0.96
    read_rate: float = 0.7
    reply_rate: float = 0.6
    reassign_rate: float = 0.1
    contact_update_rate: float = 0.1
    close_rate: float = 0.85
    batch_rate: float = 0.3
    kirim_block: bool = False
    third_shape_rate: float = 0.0

    def validate(self) -> WorldConfig:
        """Return self, or raise ConfigError naming the first bad knob."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_rate", "_share")) and not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{f.name} must be between 0 and 1, got {value!r}")
        if self.phone_numbers < 1 or self.agents < 2 or self.max_contacts < 1:
            raise ConfigError("the world needs >= 1 phone number, >= 2 agents, >= 1 contact")
        if not self.session_interval > 0:
            raise ConfigError("session_interval must be positive")
        return self


@dataclass(frozen=True, slots=True)
class Phone:
    """One connected WhatsApp number (Meta ids are digit strings)."""

    phone_number_id: str
    display_phone_number: str
    waba_id: str


@dataclass(frozen=True, slots=True)
class Contact:
    """A snapshot of a contact; an update replaces the snapshot in the world."""

    index: int
    id: str
    digits: str
    name: str | None
    email: str | None
    created_at: int
    updated_at: int
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WorldEvent:
    """One true event. ``conversation_id`` is the world's own link, emitted or not."""

    type: str
    at: int
    event_id: str
    phone: Phone
    contact: Contact | None = None
    conversation_id: str | None = None
    message_id: str | None = None
    status: str | None = None
    error: tuple[int, str] | None = None
    message_type: str | None = None
    text: str | None = None
    category: str | None = None
    user_id: str | None = None
    previous_user_id: str | None = None
    team_id: str | None = None
    closed_by_user_id: str | None = None
    changed_fields: tuple[str, ...] = ()
    acquisition_source: str | None = None


@dataclass(frozen=True, slots=True)
class Bundle:
    """The events one webhook body carries, in ``shape`` (``meta``, ``kirim`` or ``legacy``)."""

    index: int
    at: int
    shape: str
    events: tuple[WorldEvent, ...]

    @property
    def type(self) -> str:
        """The event type (``X-Kirim-Event``)."""
        return self.events[0].type

    @property
    def event_id(self) -> str:
        """The event id (``X-Kirim-Event-Id``): ``evt_...`` or the wamid."""
        return self.events[0].event_id
