"""An application written against the OpenAI SDK, with nothing of llmroute in it.

It is what the drop-in test runs as its own process: the SDK reads OPENAI_BASE_URL and OPENAI_API_KEY
from the environment, and those two are all that changes to send this app through llmroute. Prints
one JSON line per call.
"""

import json

from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

client = OpenAI()
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You label support tickets with one word."},
    {"role": "user", "content": "Label this ticket: 'I was charged twice for my order.'"},
]

reply = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=50, user="helpdesk")
print(json.dumps({"model": reply.model, "content": reply.choices[0].message.content}))

stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True, user="helpdesk")
print(json.dumps({"streamed": "".join(chunk.choices[0].delta.content or "" for chunk in stream)}))
