using System.Text;
using System.Text.Json;
using Lckv.Chat;
using Lckv.Tests.Cli;
using Lckv.Tests.Formats;

namespace Lckv.Tests.Chat;

/// <summary>
/// Every case of shared/chat-templates/cases.jsonl (real Hugging Face templates, expectations rendered by Jinja2 set up
/// as transformers sets it up) byte for byte, through the library and through 'lckv template render'.
/// </summary>
public sealed class ChatTemplateCaseTests
{
    private static readonly string[] _templates = ["llama31", "qwen25", "nemo", "gemma2", "phi35", "r1distill", "chatml", "llama2"];
    private static readonly string[] _conversations = ["a-single_user", "b-system_multi_turn", "c-unicode_and_syntax", "d-ends_with_assistant"];

    private static IEnumerable<string> CaseIds => _templates.SelectMany(t => _conversations.Select(c => $"{t}-{c}"));

    public static TheoryData<string> Cases => new(CaseIds);

    private static string Dir => SharedData.Path("chat-templates");

    private static List<JsonElement> ReadCases() =>
        File.ReadAllLines(Path.Combine(Dir, "cases.jsonl"), Encoding.UTF8).Where(l => l.Trim().Length > 0)
            .Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();

    private static JsonElement Case(string id) => ReadCases().Single(c => c.GetProperty("id").GetString() == id);

    [SharedFact]
    public void TheCaseListIsTheFixtureFile()
    {
        var ids = ReadCases().Select(c => c.GetProperty("id").GetString()).ToList();
        Assert.Equal(CaseIds.Order(StringComparer.Ordinal), ids.Order(StringComparer.Ordinal));
    }

    private static ChatTemplateInput Input(JsonElement c)
    {
        var variables = new Dictionary<string, object?>();
        if (c.TryGetProperty("tools", out var tools)) variables["tools"] = tools;   // present only as null: tools=None
        return new ChatTemplateInput
        {
            MessagesJson = c.GetProperty("messages"),
            AddGenerationPrompt = c.GetProperty("add_generation_prompt").GetBoolean(),
            BosToken = c.GetProperty("bos_token").GetString()!,
            EosToken = c.GetProperty("eos_token").GetString()!,
            Date = new DateOnly(2026, 1, 15),
            Variables = variables,
        };
    }

    private static bool ExpectsError(JsonElement c, out string message)
    {
        message = c.TryGetProperty("error", out var e) ? e.GetString()! : "";
        return c.TryGetProperty("expected_error", out var x) && x.GetBoolean();
    }

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void TheLibraryRendersTheCase(string id)
    {
        var c = Case(id);
        var template = ChatTemplate.Parse(File.ReadAllText(Path.Combine(Dir, c.GetProperty("template").GetString()!), Encoding.UTF8));
        if (ExpectsError(c, out string message))
        {
            var e = Assert.Throws<ChatTemplateException>(() => template.Render(Input(c)));
            Assert.True(e.RaisedByTemplate);
            Assert.Equal(message, e.Reason);
            return;
        }
        Assert.Equal(c.GetProperty("expected").GetString(), template.Render(Input(c)));
    }

    /// <summary>The simple role/content path gives the same bytes as the JSON path.</summary>
    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void RoleContentMessagesRenderTheSame(string id)
    {
        var c = Case(id);
        var template = ChatTemplate.Parse(File.ReadAllText(Path.Combine(Dir, c.GetProperty("template").GetString()!), Encoding.UTF8));
        var input = Input(c);
        var simple = new ChatTemplateInput
        {
            Messages = c.GetProperty("messages").EnumerateArray()
                .Select(m => new ChatMessage(m.GetProperty("role").GetString()!, m.GetProperty("content").GetString()!)).ToList(),
            AddGenerationPrompt = input.AddGenerationPrompt, BosToken = input.BosToken, EosToken = input.EosToken,
            Variables = input.Variables,
        };
        if (ExpectsError(c, out string message))
            Assert.Equal(message, Assert.Throws<ChatTemplateException>(() => template.Render(simple)).Reason);
        else Assert.Equal(c.GetProperty("expected").GetString(), template.Render(simple));
    }

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void TheCommandRendersTheCase(string id)
    {
        var c = Case(id);
        using var dir = new TempDir();
        var file = new Dictionary<string, object?> { ["messages"] = c.GetProperty("messages") };
        if (c.TryGetProperty("tools", out var tools)) file["tools"] = tools;
        string messages = dir.Write("messages.json", JsonSerializer.SerializeToUtf8Bytes(file));
        var args = new List<string>
        {
            "template", "render", "--template", Path.Combine(Dir, c.GetProperty("template").GetString()!), "--messages", messages,
            "--bos-token", c.GetProperty("bos_token").GetString()!, "--eos-token", c.GetProperty("eos_token").GetString()!,
            "--date", "2026-01-15",
        };
        if (c.GetProperty("add_generation_prompt").GetBoolean()) args.Add("--add-generation-prompt");
        var r = CliTests.Run([.. args]);
        if (ExpectsError(c, out string message))
        {
            CliTests.AssertOneLineError(r, message);
            Assert.Equal("", r.Out);
            return;
        }
        Assert.Equal("", r.Err);
        Assert.Equal(0, r.Code);
        Assert.Equal(c.GetProperty("expected").GetString(), r.Out);
    }
}
