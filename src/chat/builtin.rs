//! Built-in chat templates, for models whose GGUF has none or a wrong one.
//!
//! Each follows the format its model family publishes (the Hugging Face tokenizer_config.json
//! of the reference instruct model), as Jinja, so they render through the same code path as
//! templates read from a GGUF. Where a family has no system role (Mistral, Gemma) the system
//! message is prepended to the first user message, as their later templates do, instead of
//! failing.

/// ChatML (OpenHermes, Qwen, SmolLM, ...).
pub const CHATML: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Llama 2 chat (meta-llama/Llama-2-7b-chat-hf).
pub const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}\
{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}\
{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}\
{% for message in loop_messages %}\
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\
{% endif %}\
{% if loop.index0 == 0 and system_message != false %}\
{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}\
{% else %}{% set content = message['content'] %}{% endif %}\
{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}\
{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}\
{% endfor %}";

/// Llama 3 / 3.1 instruct (meta-llama/Meta-Llama-3-8B-Instruct).
pub const LLAMA3: &str = "{% for message in messages %}\
{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}\
{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}\
{{ content }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// Mistral instruct (mistralai/Mistral-7B-Instruct-v0.1/v0.2).
pub const MISTRAL: &str = "{% if messages[0]['role'] == 'system' %}\
{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}\
{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}\
{{ bos_token }}\
{% for message in loop_messages %}\
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\
{% endif %}\
{% if message['role'] == 'user' %}\
{% if loop.index0 == 0 and system_message != false %}{{ '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\
{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}\
{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}\
{% endfor %}";

/// Phi-3 instruct (microsoft/Phi-3-mini-4k-instruct).
pub const PHI3: &str = "{% for message in messages %}\
{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '<|end|>\\n' }}\
{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '<|end|>\\n' }}\
{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + '<|end|>\\n' }}\
{% endif %}{% endfor %}\
{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

/// Gemma instruct (google/gemma-2-2b-it; the system message joins the first user turn as
/// in Gemma 3).
pub const GEMMA: &str = "{{ bos_token }}\
{% if messages[0]['role'] == 'system' %}\
{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}\
{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}\
{% for message in loop_messages %}\
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\
{% endif %}\
{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}\
{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

/// Zephyr (HuggingFaceH4/zephyr-7b-beta).
pub const ZEPHYR: &str = "{% for message in messages %}\
{% if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + eos_token + '\\n' }}\
{% elif message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + eos_token + '\\n' }}\
{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}\
{% endif %}\
{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}\
{% endfor %}";

/// Every built-in template, by the name `--chat-template` takes.
pub const BUILTIN: &[(&str, &str)] = &[
    ("chatml", CHATML),
    ("llama2", LLAMA2),
    ("llama3", LLAMA3),
    ("mistral", MISTRAL),
    ("phi3", PHI3),
    ("gemma", GEMMA),
    ("zephyr", ZEPHYR),
];
