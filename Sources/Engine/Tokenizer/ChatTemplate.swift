/// The ChatML conversation format of SmolLM2-Instruct (and other ChatML models).
///
/// Each message becomes `<|im_start|>{role}\n{content}<|im_end|>\n`; when the first message
/// is not a system message, the default system message is rendered before it; with
/// `addGenerationPrompt`, `<|im_start|>assistant\n` follows, for the model to continue.
/// This is what the Jinja template in SmolLM2's GGUF (`tokenizer.chat_template`) renders.
public struct ChatTemplate: Equatable, Sendable {
    /// One turn of a conversation.
    public struct Message: Equatable, Sendable, Codable {
        /// `system`, `user` or `assistant`.
        public var role: String
        public var content: String

        public init(role: String, content: String) {
            self.role = role
            self.content = content
        }

        public static func system(_ content: String) -> Message { Message(role: "system", content: content) }
        public static func user(_ content: String) -> Message { Message(role: "user", content: content) }
        public static func assistant(_ content: String) -> Message { Message(role: "assistant", content: content) }
    }

    /// Rendered before a conversation that does not start with a system message; nil for none.
    public var defaultSystemMessage: String?

    public init(defaultSystemMessage: String?) {
        self.defaultSystemMessage = defaultSystemMessage
    }

    /// SmolLM2-Instruct's template, with its default system message.
    public static let smolLM2 = ChatTemplate(
        defaultSystemMessage: "You are a helpful AI assistant named SmolLM, trained by Hugging Face")

    /// Recognises a ChatML Jinja template (as stored in GGUF `tokenizer.chat_template` or
    /// `tokenizer_config.json`) and takes its default system message, the literal text
    /// between `<|im_start|>system\n` and `<|im_end|>`; nil when the template is not ChatML.
    public init?(chatMLJinjaTemplate template: String) {
        guard template.contains("<|im_start|>"), template.contains("<|im_end|>"),
              template.contains("message['role']") || template.contains("message.role") else { return nil }
        let opening = "<|im_start|>system\n"
        if let start = template.range(of: opening),
           let end = template.range(of: "<|im_end|>", range: start.upperBound..<template.endIndex) {
            self.init(defaultSystemMessage: String(template[start.upperBound..<end.lowerBound]))
        } else {
            self.init(defaultSystemMessage: nil)
        }
    }

    /// The rendering in pieces, in order: each turn's header (`<|im_start|>role\n`), its
    /// content, its `<|im_end|>` and the newline after it; `isAssistant` marks an assistant
    /// turn's content and end-of-turn token (what a chat fine-tune learns). Joined, the pieces
    /// are ``render(_:addGenerationPrompt:)``.
    public func pieces(_ messages: [Message], addGenerationPrompt: Bool) -> [(text: String, isAssistant: Bool)] {
        var out: [(text: String, isAssistant: Bool)] = []
        if let defaultSystemMessage, let first = messages.first, first.role != "system" {
            out += [("<|im_start|>system\n", false), (defaultSystemMessage, false), ("<|im_end|>", false), ("\n", false)]
        }
        for message in messages {
            let learn = message.role == "assistant"
            out += [("<|im_start|>" + message.role + "\n", false), (message.content, learn), ("<|im_end|>", learn), ("\n", false)]
        }
        if addGenerationPrompt { out.append(("<|im_start|>assistant\n", false)) }
        return out.filter { !$0.text.isEmpty }
    }

    /// The conversation as one string, ready for ``BPETokenizer/encode(_:allowSpecial:)``
    /// with special tokens allowed.
    public func render(_ messages: [Message], addGenerationPrompt: Bool) -> String {
        var text = ""
        // As in the Jinja template, the default is rendered inside the loop over messages,
        // so an empty conversation gets none.
        if let defaultSystemMessage, let first = messages.first, first.role != "system" {
            text += "<|im_start|>system\n" + defaultSystemMessage + "<|im_end|>\n"
        }
        for message in messages {
            text += "<|im_start|>" + message.role + "\n" + message.content + "<|im_end|>\n"
        }
        if addGenerationPrompt { text += "<|im_start|>assistant\n" }
        return text
    }
}
