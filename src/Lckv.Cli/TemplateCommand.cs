using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Lckv.Chat;

namespace Lckv.Cli;

/// <summary>lckv template render: a chat template applied to a conversation, printed exactly as the model gets it.</summary>
public static class TemplateCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var template = new Option<string?>("--template") { Description = "the chat template, a Jinja file" };
        var model = new Option<string?>("--model") { Description = "take the template from a checkpoint folder (tokenizer_config.json) or a GGUF file instead" };
        var messages = new Option<string>("--messages")
        {
            Description = "JSON file: an array of {\"role\", \"content\", ...} messages, or an object with \"messages\" and further render variables (e.g. \"tools\")",
            Required = true,
        };
        var addPrompt = new Option<bool>("--add-generation-prompt") { Description = "end with the opening of the assistant's turn" };
        var bos = new Option<string?>("--bos-token") { Description = "the bos_token variable (default: the --model's own, else empty)" };
        var eos = new Option<string?>("--eos-token") { Description = "the eos_token variable (default: the --model's own, else empty)" };
        var date = new Option<string?>("--date") { Description = "YYYY-MM-DD for strftime_now (default: today, UTC)" };
        var render = new Command("render", "print the rendered conversation exactly (no newline is added after it)");
        foreach (var o in new Option[] { template, model, messages, addPrompt, bos, eos, date }) render.Options.Add(o);
        render.SetAction(p =>
        {
            var chat = LoadTemplate(p.GetValue(template), p.GetValue(model));
            DateOnly? day = null;
            if (p.GetValue(date) is { } d)
            {
                if (!DateOnly.TryParseExact(d, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out var parsed))
                    throw new LckvException($"--date must be YYYY-MM-DD, got '{d}'");
                day = parsed;
            }
            var (json, variables) = ReadMessages(p.GetValue(messages)!);
            var (modelBos, modelEos) = p.GetValue(model) is { } m ? ChatTemplate.ReadSpecialTokens(m) : (null, null);
            string text = chat.Render(new ChatTemplateInput
            {
                MessagesJson = json,
                AddGenerationPrompt = p.GetValue(addPrompt),
                BosToken = p.GetValue(bos) ?? modelBos ?? "",
                EosToken = p.GetValue(eos) ?? modelEos ?? "",
                Date = day,
                Variables = variables,
            });
            Write(stdout, text);
            return 0;
        });
        var cmd = new Command("template", "chat templates");
        cmd.Subcommands.Add(render);
        return cmd;
    }

    private static ChatTemplate LoadTemplate(string? file, string? model)
    {
        if ((file is null) == (model is null)) throw new LckvException("give one of --template FILE or --model PATH");
        if (model is not null) return ChatTemplate.Load(model);
        if (!File.Exists(file)) throw new LckvException($"template file '{file}' does not exist");
        return ChatTemplate.Parse(File.ReadAllText(file!, Encoding.UTF8));
    }

    /// <summary>The messages array, and the other render variables when the file is an object.</summary>
    private static (JsonElement Messages, Dictionary<string, object?> Variables) ReadMessages(string path)
    {
        if (!File.Exists(path)) throw new LckvException($"messages file '{path}' does not exist");
        JsonElement root;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            root = doc.RootElement.Clone();
        }
        catch (JsonException e) { throw new LckvException($"messages file '{path}' is not valid JSON: {e.Message}"); }
        var variables = new Dictionary<string, object?>();
        if (root.ValueKind == JsonValueKind.Array) return (root, variables);
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("messages", out var list) || list.ValueKind != JsonValueKind.Array)
            throw new LckvException($"messages file '{path}' must hold an array of messages or an object with a \"messages\" array");
        foreach (var p in root.EnumerateObject())
            if (p.Name != "messages") variables[p.Name] = p.Value;
        return (list, variables);
    }

    /// <summary>The rendering byte for byte: UTF-8 straight to the process's stdout when that is the console (whatever
    /// the console's encoding setting), else through the given writer.</summary>
    private static void Write(TextWriter stdout, string text)
    {
        if (ReferenceEquals(stdout, Console.Out))
        {
            Console.Out.Flush();
            using var raw = Console.OpenStandardOutput();
            raw.Write(new UTF8Encoding(false).GetBytes(text));
            raw.Flush();
        }
        else stdout.Write(text);
    }
}
