"""difficulty: the local difficulty model, shared by classifier_svc and router_svc.

How hard a conversation is for a cheap model, estimated in process: the conversation and verdict
types, identifier stripping and hand features, the learned model's inference over its committed
artifact (numpy only), and the keyword heuristic it falls back to. No service code: the services
import this package, never each other.

    model = load_local_model()          # DEFAULT_ARTIFACT_DIR; the heuristic when there is no artifact
    await model.warm_up()
    verdict = await model.classify(Conversation.user("Is this spam?"))
"""

from difficulty.conversation import Conversation, Message
from difficulty.heuristic import HeuristicStrategy
from difficulty.learned import LearnedStrategy
from difficulty.local import DEFAULT_ARTIFACT_DIR, load_local_model
from difficulty.model import ArtifactError
from difficulty.verdict import Overhead, Strategy, Verdict

__all__ = [
    "DEFAULT_ARTIFACT_DIR",
    "ArtifactError",
    "Conversation",
    "HeuristicStrategy",
    "LearnedStrategy",
    "Message",
    "Overhead",
    "Strategy",
    "Verdict",
    "load_local_model",
]
