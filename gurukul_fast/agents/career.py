"""The `career` persona ("Career Guide"): practical career guidance from a topic table."""

from __future__ import annotations

from gurukul_fast.agents.keyword import KeywordAgent, Topic

__all__ = ["career_agent"]

# Tried in order; the first topic whose keywords occur answers.
_TOPICS = (
    Topic(
        "job loss",
        (
            "laid off",
            "layoff",
            "layoffs",
            "fired",
            "lost my job",
            "unemployed",
            "redundan*",
            "jobless",
        ),
        (
            "I'm sorry, losing a job is hard and it says little about your worth. Give yourself "
            "a few days, then make a plan: check your finances and any severance, update your "
            "resume, tell your network you are looking, and set a small daily routine of "
            "applications and learning.",
            "A layoff is a setback, not a verdict. Ask for a reference while contacts are fresh, "
            "list your achievements from the role with numbers, and reach out to five people "
            "this week. Many jobs are found through people rather than job boards.",
        ),
    ),
    Topic(
        "cover letter",
        ("cover letter", "cover letters", "motivation letter"),
        (
            "Keep a cover letter to three short paragraphs: why this company and role, two or "
            "three achievements that match what they need, and a confident close. Tailor it to "
            "each application; a generic letter reads like one.",
        ),
    ),
    Topic(
        "resume",
        ("resume", "resumes", "cv", "curriculum vitae", "biodata"),
        (
            "A strong resume is one or two pages, tailored to the job. Lead each bullet with an "
            'action verb and show results with numbers ("cut report time by 30%"). Put your '
            "most relevant experience and skills first, and mirror the keywords in the job "
            "description.",
            "Check your resume for three things: a clear headline of who you are, achievements "
            "rather than duties, and a simple layout that applicant tracking systems can read "
            "(no tables or images). Ask someone in your target field to review it.",
        ),
    ),
    Topic(
        "interview",
        ("interview*",),
        (
            "Prepare for interviews with the STAR method: for each story, the Situation, the "
            "Task, the Action you took and the Result. Have five stories ready (a success, a "
            "failure, a conflict, leadership, learning fast) and research the company's products "
            "and recent news.",
            "Practise out loud, ideally with a friend or by recording yourself. Prepare two or "
            "three thoughtful questions for the interviewer, and after the interview send a "
            "short thank-you note that recalls something you discussed.",
        ),
    ),
    Topic(
        "salary",
        (
            "salary",
            "salaries",
            "pay",
            "paid",
            "raise",
            "hike",
            "negotiat*",
            "compensation",
            "ctc",
            "job offer",
            "job offers",
            "offer letter",
        ),
        (
            "Before negotiating, research the market range for the role, level and city (salary "
            "surveys, peers, recruiters). Let them name a number first if you can, answer with a "
            "range whose bottom is your real target, and negotiate the whole package: base, "
            "bonus, equity, leave and learning budget.",
            "To ask for a raise, build a short case: your results in the last year with numbers, "
            "the market rate for your role, and what you plan to take on next. Ask for a meeting "
            "about it rather than raising it in passing.",
        ),
    ),
    Topic(
        "career switch",
        (
            "switch*",
            "change career*",
            "change my career*",
            "change field*",
            "change my field*",
            "change job*",
            "change my job*",
            "change industr*",
            "career change",
            "pivot*",
            "transition*",
            "new field",
        ),
        (
            "Switching careers works best in steps: list the skills you already have that carry "
            "over, talk to three people doing the job you want, then test it with a course, a "
            "side project or freelance work before you jump. A bridge role can make the move "
            "smaller.",
            "Before switching, be clear on what you're moving towards, not only away from. Build "
            "one or two portfolio pieces in the new field and tell your story as a deliberate "
            "progression; it makes the change easier for employers to understand.",
        ),
    ),
    Topic(
        "skills",
        (
            "skill",
            "skills",
            "learn*",
            "course",
            "courses",
            "certificat*",
            "upskill*",
            "bootcamp",
            "bootcamps",
            "degree",
            "masters",
            "mba",
        ),
        (
            "Pick skills from real job postings: collect ten ads for your target role and note "
            "the skills that keep appearing. Learn by building something you can show, not only "
            "by collecting certificates.",
            "A good learning plan: one core skill at a time, a small project to apply it, and "
            "sharing what you built. Employers value evidence of applied skill more than course "
            "completions.",
        ),
    ),
    Topic(
        "job search",
        (
            "job search",
            "job hunt*",
            "apply*",
            "applied",
            "application",
            "applications",
            "opening",
            "openings",
            "vacanc*",
            "linkedin",
            "network*",
            "referral",
            "referrals",
            "recruit*",
            "find a job",
            "get a job",
        ),
        (
            "Mix your job search: some applications to posted roles, but most of your time on "
            "people. Referrals are far more likely to lead to interviews, so reach out to former "
            "colleagues and alumni with a short, specific message.",
            "Keep your LinkedIn headline specific (role plus strength), track applications in a "
            "simple sheet, and tailor your resume for each role. Quality beats quantity.",
        ),
    ),
    Topic(
        "promotion",
        ("promot*", "career growth", "grow in my career", "stuck", "senior"),
        (
            "To move up, make your work visible: agree clear goals with your manager, keep a "
            "record of results, and ask directly what the next level looks like and what gap "
            "you need to close. Take on a problem that matters to your team.",
            "Feeling stuck is a useful signal. Ask yourself whether you lack challenge, "
            "recognition, or direction; each has a different fix, from a new project to a "
            "conversation with your manager to a move elsewhere.",
        ),
    ),
    Topic(
        "workplace",
        (
            "boss",
            "manager",
            "cowork*",
            "colleague",
            "colleagues",
            "teammate*",
            "team mate*",
            "toxic",
            "conflict",
            "office politics",
        ),
        (
            "With a difficult manager or colleague, talk privately and specifically: describe "
            "the situation, its impact, and what you'd like instead. Keep notes of incidents, "
            "and if it's serious or keeps happening, involve HR.",
        ),
    ),
    Topic(
        "burnout",
        (
            "burnout",
            "burn out",
            "burned out",
            "burnt out",
            "stress*",
            "overwork*",
            "work life balance",
            "exhaust*",
            "long hours",
        ),
        (
            "Burnout is a sign the load is unsustainable, not that you are weak. Protect sleep "
            "and some time off, talk to your manager about priorities, and set boundaries on "
            "after-hours work. If it affects your health, please see a doctor.",
        ),
    ),
    Topic(
        "first job",
        (
            "fresher",
            "freshers",
            "graduat*",
            "internship",
            "internships",
            "first job",
            "college",
            "placement",
            "placements",
            "entry level",
        ),
        (
            "For a first job, projects and internships count as experience. Put them first on "
            "your resume, build a small portfolio, and use your college alumni network: many "
            "graduates are happy to give advice or a referral.",
        ),
    ),
    Topic(
        "freelance",
        (
            "freelanc*",
            "startup",
            "startups",
            "start up",
            "own business",
            "entrepreneur*",
            "side project*",
            "side hustle*",
        ),
        (
            "Before going independent, test the idea on the side: find your first paying "
            "clients, keep six months of expenses saved, and work out your pricing from the "
            "income you need. Contracts and invoices matter from day one.",
        ),
    ),
    Topic(
        "remote",
        ("remote", "work from home", "wfh", "hybrid", "relocat*", "abroad"),
        (
            "For remote roles, show that you communicate well in writing and deliver on your "
            "own. Mention remote experience explicitly, and look at companies that are remote-"
            "first rather than remote-tolerant.",
        ),
    ),
    Topic(
        "career choice",
        (
            "which career",
            "what career",
            "career option",
            "career options",
            "choose a career",
            "passion",
            "confused",
            "what should i do",
        ),
        (
            "To choose a direction, look where three things overlap: what you enjoy, what you "
            "are good at (or could become good at), and what people will pay for. Then run "
            "small experiments, such as a course, a project or a conversation, before you "
            "commit.",
        ),
    ),
    Topic(
        "greeting",
        ("hi", "hello", "hey", "namaste", "good morning", "good afternoon", "good evening"),
        (
            "Hello! I'm your career guide. I can help with resumes, interviews, salary talks, "
            "switching careers and building skills. Where are you in your career right now?",
        ),
    ),
    Topic(
        "thanks",
        ("thank", "thanks", "thank you", "thx"),
        ("You're welcome, and good luck! Come back any time to plan your next step.",),
    ),
)

_FALLBACKS = (
    "Tell me a little about where you are now and where you'd like to be in a year or two. "
    "I can help with resumes, interviews, salary, switching careers and skills.",
    "Career moves are easier in small steps. What is the one thing you'd most like to change "
    "about your work right now?",
    "What kind of role are you in or aiming for? With that I can suggest concrete next steps.",
)


def career_agent() -> KeywordAgent:
    """Return the built-in `career` agent ("Career Guide"); call once at start-up."""
    return KeywordAgent("career", "Career Guide", _TOPICS, _FALLBACKS)
